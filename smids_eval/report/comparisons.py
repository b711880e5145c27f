"""Paired comparisons of arms (variant × setting) across the same outer folds of every repeat.

Every comparison is paired on (repeat, fold) and reports, for the difference ``a − b``:

* Nadeau & Bengio's corrected resampled t-test (the fold differences are not independent: the
  training parts overlap, so the variance is inflated by ``1/n + n_test/n_fit``);
* the Bayesian correlated t-test of Benavoli, Corani, Demšar & Zaffalon (JMLR 18(77), 2017) with a
  region of practical equivalence (ROPE): ``p_better = P(diff > rope)``, ``p_equivalent =
  P(|diff| ≤ rope)``, ``p_worse = P(diff < −rope)`` ("a" better / equivalent / worse than "b");
* the Wilcoxon signed-rank p-value as a rank-based check, only where it can reach p < 0.05: the
  exact two-sided test's smallest p over n pairs is 2 / 2ⁿ, so with n < 6 pairs it never can and
  the ``p_wilcoxon`` column is dropped (it is NaN for the rows of a mixed table with n < 6);
* Cohen's d_z as effect size.

Which comparisons (column ``family``):

* ``prespecified``: a small family fixed before looking at the results, per metric: each
  variant vs the study's reference ``F.0`` in the same setting (``a`` = the variant), ``tuned``
  vs ``specified`` for each variant (``a`` = tuned), and each variant's neural head vs its
  random-forest head ``<v>+RF`` (``a`` = neural; the neural head in the RF row's setting, else
  ``tuned``, else every setting the variant has). Holm's adjustment (``p_holm``) is applied
  within this family, per metric, and nowhere else.
* ``exploratory``: the remaining pairs of computed arms (``compare(..., exploratory=True)``);
  unadjusted, ``p_holm`` is empty, read them as hypotheses, not findings.

Identical arms are computed once (``smids_eval.arms``): folds.csv.gz holds only the computed rows,
and their ``aliases`` column names the other variants that are the same computation in the same
setting. A question about an alias (``F.2`` tuned vs specified) is asked of its computed arm
(``F.0 [tuned]`` vs ``F.2 [specified]``); a question that resolves to an arm against itself is
dropped, and a pair reached by several questions is tested once (``question`` lists them all).

``tied_with_best``: for the key metric (macro-F1) the arm with the highest mean is the best; an
arm is tied with it when the Bayesian correlated t-test, paired on (repeat, fold), does not put
P(arm worse than the best by more than the ROPE) at 0.95 or above — i.e. it is not clearly worse.
The best arm is tied with itself; an arm sharing fewer than two folds with the best is unknown.

The ROPE is 0.01 (one point of macro-F1, accuracy or recall) unless told otherwise.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from ..naming import RF_SETTING, RF_SUFFIX, arm_label, is_rf

COMPARED = ("cls_macro_f1", "cls_recall_abnormal_sperm", "cls_accuracy")
#: the metric that decides the best arm and ``tied_with_best``
KEY_METRIC = "cls_macro_f1"
#: the study's reference variant
REFERENCE = "F.0"
#: region of practical equivalence on a [0, 1] metric
ROPE = 0.01
#: fewest pairs with which an exact two-sided Wilcoxon test can reach p < 0.05 (2 / 2⁶ < 0.05)
WILCOXON_MIN_PAIRS = 6
#: ratio n_test / n_fit assumed when folds.csv.gz has no sizes (4:1 split)
DEFAULT_RATIO = 0.25


def held_out_ratio(folds: pd.DataFrame) -> float:
    """Mean held-out / fitted size of the rows (``n_fit``: inner-training part; older runs
    without it fall back to the outer training part)."""
    fitted = "n_fit" if "n_fit" in folds else "n_train"
    if not {"n_test", fitted} <= set(folds):
        return 0.0
    return float((folds["n_test"] / folds[fitted]).mean())


def corrected_t_test(diff: np.ndarray, held_out_ratio: float) -> tuple[float, float]:
    """Nadeau–Bengio corrected resampled t statistic and two-sided p over k fold differences."""
    k = len(diff)
    var = diff.var(ddof=1) if k > 1 else 0.0
    if k < 2 or var == 0:
        return float("nan"), float("nan")
    t = diff.mean() / np.sqrt((1 / k + held_out_ratio) * var)
    return float(t), float(2 * stats.t.sf(abs(t), k - 1))


def bayesian_correlated_t(diff: np.ndarray, held_out_ratio: float, rope: float = ROPE
                          ) -> tuple[float, float, float]:
    """(P(diff > rope), P(|diff| ≤ rope), P(diff < −rope)) under the correlated t-test posterior.

    Benavoli et al. (JMLR 2017): with n fold differences of mean m and sample variance s², and a
    correlation rho = n_test / (n_test + n_fit) between them, the posterior of the mean
    difference is Student-t with n − 1 degrees of freedom, location m and scale²
    (1/n + rho / (1 − rho)) · s²; rho / (1 − rho) = n_test / n_fit = ``held_out_ratio``, the same
    correction as Nadeau–Bengio's. Written by hand with ``scipy.stats.t`` (``baycomp``, the
    authors' package, is not installable here); ``baycomp.two_on_single(x, y, rope, runs)``
    computes the same posterior from ``rho = 1 / k`` for k-fold CV.

    Zero variance (every fold differs by the same amount) leaves the posterior a point mass at
    m; fewer than two differences give NaNs.
    """
    diff = np.asarray(diff, dtype=float)
    diff = diff[~np.isnan(diff)]
    n = len(diff)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    mean, var = float(diff.mean()), float(diff.var(ddof=1))
    if var == 0:
        return float(mean > rope), float(abs(mean) <= rope), float(mean < -rope)
    scale = np.sqrt((1 / n + held_out_ratio) * var)
    posterior = stats.t(df=n - 1, loc=mean, scale=scale)
    better, worse = float(posterior.sf(rope)), float(posterior.cdf(-rope))
    return better, max(0.0, 1.0 - better - worse), worse


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p; NaN with fewer than ``WILCOXON_MIN_PAIRS`` pairs (it
    cannot reach 0.05 there), 1 when every difference is zero."""
    if len(diff) < WILCOXON_MIN_PAIRS:
        return float("nan")
    if not np.any(diff != 0):
        return 1.0
    try:
        return float(stats.wilcoxon(diff).pvalue)
    except ValueError:
        return float("nan")


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs kept)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


def _prepared(folds: pd.DataFrame) -> pd.DataFrame:
    folds = folds.copy()
    if "repeat" not in folds:
        folds["repeat"] = 0
    folds["arm"] = [arm_label(v, s) for v, s in zip(folds["variant"], folds["setting"],
                                                    strict=True)]
    return folds


def alias_map(folds: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    """(alias variant, setting) → the computed (variant, setting) it is reported under."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    if "aliases" not in folds:
        return out
    for (variant, setting), names in folds.groupby(["variant", "setting"], sort=False)["aliases"]:
        for name in {a for value in names.dropna() for a in str(value).split("|") if a}:
            if name != variant:
                out.setdefault((name, setting), (variant, setting))
    return out


def family(folds: pd.DataFrame, reference: str = REFERENCE
           ) -> list[tuple[str, str, str]]:
    """The pre-specified questions as (a arm label, b arm label, question), aliases resolved to
    the computed arm, self-pairs dropped, each unordered pair once (its questions joined).

    ``reference`` falls back to the first neural variant of the frame when the run lacks it."""
    computed = list(dict.fromkeys(zip(folds["variant"], folds["setting"], strict=True)))
    aliases = alias_map(folds)
    known = set(computed) | set(aliases)

    def resolve(arm: tuple[str, str]) -> tuple[str, str] | None:
        arm = aliases.get(arm, arm)
        return arm if arm in set(computed) else None

    names = list(dict.fromkeys([v for v, _ in computed] + [v for v, _ in aliases]))
    neural = [v for v in names if not is_rf(v)]
    rf = [v for v in names if is_rf(v)]
    settings_of = {v: [s for n, s in sorted(known, key=lambda a: a[1]) if n == v] for v in names}
    if reference not in neural and neural:
        reference = neural[0]
    questions: list[tuple[tuple[str, str], tuple[str, str], str]] = []
    for v in neural:
        if v != reference:
            for s in settings_of[v]:
                if (reference, s) in known:
                    questions.append(((v, s), (reference, s), f"{v} vs {reference} [{s}]"))
    for v in neural:
        if {"tuned", "specified"} <= set(settings_of[v]):
            questions.append(((v, "tuned"), (v, "specified"), f"{v}: tuned vs specified"))
    for head in rf:
        base = head.removesuffix(RF_SUFFIX)
        if base not in settings_of:
            continue
        for rf_setting in settings_of[head]:
            own = settings_of[base]
            pick = ([rf_setting] if rf_setting in own else [RF_SETTING] if RF_SETTING in own
                    else own)
            for s in pick:
                questions.append(((base, s), (head, rf_setting),
                                  f"{base} [{s}] neural vs RF head"))
    pairs: dict[frozenset, list] = {}
    for a, b, question in questions:
        ra, rb = resolve(a), resolve(b)
        if ra is None or rb is None or ra == rb:
            continue
        key = frozenset((ra, rb))
        if key in pairs:
            pairs[key][2].append(question)
        else:
            pairs[key] = [ra, rb, [question]]
    return [(arm_label(*a), arm_label(*b), "; ".join(q)) for a, b, q in pairs.values()]


def _ratios(folds: pd.DataFrame) -> dict[str, float]:
    """Held-out / fitted size of each arm's rows (arm label → ratio; 0 when unknown)."""
    return {arm: held_out_ratio(part) for arm, part in folds.groupby("arm", sort=False)}


def _pair_ratio(ratios: dict[str, float], a: str, b: str) -> float:
    return float(np.mean([ratios.get(a, 0.0), ratios.get(b, 0.0)])) or DEFAULT_RATIO


def _pair_row(table: pd.DataFrame, ratios: dict[str, float], metric: str, a: str, b: str,
              rope: float) -> dict | None:
    pair = table[[a, b]].dropna()
    if len(pair) < 2:
        return None
    diff = (pair[a] - pair[b]).to_numpy()
    ratio = _pair_ratio(ratios, a, b)
    t, p = corrected_t_test(diff, ratio)
    better, equivalent, worse = bayesian_correlated_t(diff, ratio, rope)
    sd = diff.std(ddof=1)
    return {"metric": metric, "a": a, "b": b, "n_folds": len(diff),
            "mean_a": pair[a].mean(), "mean_b": pair[b].mean(), "mean_diff": diff.mean(),
            "cohens_dz": diff.mean() / sd if sd > 0 else np.nan,
            "a_wins": int((diff > 0).sum()), "rope": rope, "p_better": better,
            "p_equivalent": equivalent, "p_worse": worse, "t_corrected": t,
            "p_corrected_t": p, "p_wilcoxon": wilcoxon_p(diff)}


def compare(folds: pd.DataFrame, metrics=COMPARED, exploratory: bool = True,
            reference: str = REFERENCE, rope: float = ROPE) -> pd.DataFrame:
    """The pre-specified family (Holm within it, per metric) and, with ``exploratory``, every
    other pair of computed arms sharing folds (unadjusted), for each metric; see the module
    docstring. Columns: family, question, metric, a, b, n_folds, mean_a, mean_b, mean_diff,
    cohens_dz, a_wins, rope, p_better, p_equivalent, p_worse, t_corrected, p_corrected_t,
    p_wilcoxon (dropped when no row has six pairs), p_holm."""
    folds = _prepared(folds)
    questions = family(folds, reference)
    ratios = _ratios(folds)
    rows = []
    for metric in [m for m in metrics if m in folds]:
        table = folds.pivot_table(index=["repeat", "fold"], columns="arm", values=metric,
                                  aggfunc="first")
        asked = set()
        for a, b, question in questions:
            asked.add(frozenset((a, b)))
            if a in table and b in table and (row := _pair_row(table, ratios, metric, a, b, rope)):
                rows.append({"family": "prespecified", "question": question, **row})
        if exploratory:
            for a, b in itertools.combinations(table.columns, 2):
                if frozenset((a, b)) not in asked and (
                        row := _pair_row(table, ratios, metric, a, b, rope)):
                    rows.append({"family": "exploratory", "question": "", **row})
    result = pd.DataFrame(rows)
    if result.empty:
        return result
    result["p_holm"] = np.nan
    pre = result[result["family"] == "prespecified"]
    for _, part in pre.groupby("metric"):
        result.loc[part.index, "p_holm"] = holm(part["p_corrected_t"].to_numpy())
    if result["p_wilcoxon"].isna().all():
        result = result.drop(columns="p_wilcoxon")
    result["_order"] = result["family"].map({"prespecified": 0, "exploratory": 1})
    result = result.sort_values(["_order", "metric", "p_corrected_t"], kind="stable",
                                na_position="last")
    return result.drop(columns="_order").reset_index(drop=True)


def tied_with_best(folds: pd.DataFrame, metric: str = KEY_METRIC, rope: float = ROPE,
                   level: float = 0.95) -> pd.DataFrame:
    """One row per computed (variant, setting): ``p_worse_than_best`` (Bayesian correlated
    t-test, paired on (repeat, fold), P(arm − best < −rope)) and ``tied_with_best`` (that
    probability below ``level``; True for the best arm, NA with fewer than two shared folds)."""
    columns = ["variant", "setting", "p_worse_than_best", "tied_with_best"]
    if metric not in folds or folds[metric].isna().all():
        return pd.DataFrame(columns=columns)
    folds = _prepared(folds)
    table = folds.pivot_table(index=["repeat", "fold"], columns="arm", values=metric,
                              aggfunc="first")
    means = folds.groupby("arm", sort=False)[metric].mean()
    ratios = _ratios(folds)
    best = means.idxmax()
    rows = []
    for (variant, setting), _ in folds.groupby(["variant", "setting"], sort=False):
        arm = arm_label(variant, setting)
        if arm == best:
            p_worse, tied = 0.0, True
        else:
            pair = table[[arm, best]].dropna()
            ratio = _pair_ratio(ratios, arm, best)
            diff = (pair[arm] - pair[best]).to_numpy()
            p_worse = bayesian_correlated_t(diff, ratio, rope)[2]
            tied = pd.NA if np.isnan(p_worse) else bool(p_worse < level)
        rows.append({"variant": variant, "setting": setting, "p_worse_than_best": p_worse,
                     "tied_with_best": tied})
    out = pd.DataFrame(rows, columns=columns)
    out["tied_with_best"] = out["tied_with_best"].astype("boolean")
    return out
