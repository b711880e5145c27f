"""The one owner of the metric-column grammar.

Every evaluator names a metric by its structured parts and gets the wide ``folds.csv.gz`` column
back from ``metric_column``; the parts travel with the value (``records`` on the saved fold, then
``RUN/metrics.csv.gz``), so no reader ever parses a column name.

Tidy vocabulary (one row of ``metrics.csv.gz`` per fold × metric):

- ``family``: classification, calibration, mc_dropout, selective, conformal, ood, shift, batch;
- ``set``: the data the metric is measured on: ``test`` (``HELD_OUT``, the held-out outer fold of
  new acquisition groups), an OOD set name (``textures``, ``lab_<name>``, a shift with severity
  such as ``blur_s3``: see ``shift_set``);
- ``method``: the OOD detector, conformal method (``lac``, ``lac_mondrian``, ...) or confidence
  score (``msp``, ...) it is about; empty otherwise;
- ``metric``: the quantity, with its qualifiers appended: a class (``recall_abnormal_sperm``,
  ``cm_<true>_<predicted>``), a conformal miscoverage (``coverage_a0.1``,
  ``coverage_normal_sperm_a0.05``), temperature scaling (``ece_ts``).

``kind`` says what a metric is, for the tables that summarise it: a ``proportion`` in [0, 1]
(its intervals are clipped), a ``count`` or an unbounded ``value``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

#: family -> column prefix
PREFIX = {"classification": "cls", "calibration": "cal", "mc_dropout": "mc", "selective": "sel",
          "conformal": "cp", "ood": "ood", "shift": "shift", "batch": "batch"}
#: family -> the parts its column joins, in order (families without ``set`` measure on test)
_ORDER = {"classification": ("metric",), "calibration": ("metric",), "mc_dropout": ("metric",),
          "selective": ("metric", "method"), "conformal": ("method", "metric"),
          "ood": ("set", "method", "metric"), "shift": ("set", "metric"),
          "batch": ("set", "metric")}
#: the held-out outer fold; its columns spell it ``heldout`` where a set is named
HELD_OUT = "test"
_SPELLED = {HELD_OUT: "heldout"}
#: the tidy columns of metrics.csv.gz after the fold keys
PARTS = ("family", "set", "method", "metric")
#: metrics that are not proportions (base name, before class / alpha qualifiers)
KINDS = {"nll": "value", "brier": "value", "temperature": "value", "set_size": "value",
         "accuracy_drop": "value", "accuracy_delta": "value", "nll_delta": "value",
         "ece_delta": "value", "mi_mean": "value", "entropy_mean": "value",
         "cm": "count", "val_thr_accepted": "count", "batches": "count"}


@dataclass(frozen=True)
class MetricName:
    """One metric's structured parts (``kind`` from its base name, see ``KINDS``)."""

    family: str
    set: str
    method: str
    metric: str
    kind: str = "proportion"

    @property
    def column(self) -> str:
        parts = {"set": _SPELLED.get(self.set, self.set), "method": self.method,
                 "metric": self.metric}
        return "_".join([PREFIX[self.family], *(parts[p] for p in _ORDER[self.family])])

    @property
    def bounded(self) -> bool:
        return self.kind == "proportion"

    def as_dict(self) -> dict:
        return asdict(self)


#: every column named in this process -> its parts (checks that the grammar is one-to-one)
_NAMED: dict[str, MetricName] = {}


def alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}"


def qualified(base: str, *, cls: str | tuple[str, ...] = (), alpha: float | None = None) -> str:
    """The tidy ``metric``: ``base`` followed by its class slug(s) and alpha tag."""
    classes = (cls,) if isinstance(cls, str) else tuple(cls)
    return "_".join([base, *classes, *([alpha_tag(alpha)] if alpha is not None else [])])


def metric_name(family: str, metric: str, *, set: str = HELD_OUT, method: str = "",
                cls: str | tuple[str, ...] = (), alpha: float | None = None) -> MetricName:
    """The parts of one metric, checked against the family's grammar."""
    if family not in PREFIX:
        raise ValueError(f"unknown metric family {family!r}; one of {sorted(PREFIX)}")
    used = _ORDER[family]
    if ("set" not in used and set != HELD_OUT) or ("method" not in used and method):
        raise ValueError(f"{family} metrics have no set/method part (got {set!r}, {method!r})")
    if "method" in used and not method:
        raise ValueError(f"{family} metrics need a method")
    return MetricName(family, set, method, qualified(metric, cls=cls, alpha=alpha),
                      KINDS.get(metric, "proportion"))


def metric_column(family: str, metric: str, **parts) -> str:
    """The wide ``folds.csv.gz`` column of one metric (see ``metric_name``), remembered with its
    parts so the saved fold can carry them (``records``)."""
    name = metric_name(family, metric, **parts)
    known = _NAMED.setdefault(name.column, name)
    if known != name:
        raise ValueError(f"column {name.column!r} would name both {known} and {name}")
    return name.column


def column(family: str, set: str, method: str, metric: str) -> str:
    """The wide column of a tidy row (the forward direction only)."""
    return MetricName(family, set, method, metric).column


def records(row: dict) -> list[dict]:
    """The parts of every key of ``row`` that an evaluator named in this process, with its
    ``column`` (what ``RunFolder.save_fold`` stores beside the values)."""
    return [{"column": k, **_NAMED[k].as_dict()} for k in row if k in _NAMED]


def shift_set(shift: str, severity: int) -> str:
    """The set name of a synthetic shift at one severity (``blur_s3``)."""
    return f"{shift}_s{severity}"


def parts_frame(names) -> pd.DataFrame:
    """The parts table (``column`` + parts + ``kind``) of ``MetricName`` objects, as
    ``RunFolder.tidy`` returns it for a run (for folds built by hand)."""
    return pd.DataFrame([{"column": n.column, **n.as_dict()} for n in names],
                        columns=["column", *PARTS, "kind"])
