"""Training loop for the trainable suffix, early stopping on inner-validation macro-F1, and
prediction into ``ModelOutputs`` (deterministic logits, penultimate features, MC-dropout).

Inputs come from a *source*: ``CachedSource`` (bf16 prefix activations, one random view per
image per epoch) or ``ImageSource`` (uint8 images, augmented on the fly and passed through the
frozen prefix). Either way only the suffix is trained; the prefix is frozen.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import DEFAULT_AUGMENT, N_PARAMS, AugmentConfig, augment, to_channels, to_float
from .device import Runtime, compiled
from .errors import ConfigError, TrainingDiverged
from .f1 import macro_f1
from .io import write_csv
from .models import Suffix
from .outputs import ModelOutputs
from .variants import OPTIMIZERS

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds")


@dataclass(frozen=True)
class Hyper:
    """Tuned (or as-specified) optimisation settings."""

    optimizer: str
    learning_rate: float
    weight_decay: float = 0.0


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]   # suffix state (CPU) at the best epoch
    history: pd.DataFrame
    epochs_run: int
    best_epoch: int
    best_val_macro_f1: float


class CachedSource:
    """Cached prefix activations (N, V, C, h, w); training draws one view per image per epoch."""

    def __init__(self, features: torch.Tensor, runtime: Runtime):
        if features.dim() == 4:
            features = features.unsqueeze(1)
        self.features, self.runtime = features, runtime
        if runtime.device.type == "cuda":   # whole cache on the GPU when it fits comfortably
            free, _ = torch.cuda.mem_get_info(runtime.device)
            if features.nbytes < free // 4:
                self.features = features.to(runtime.device)
        self.views = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def start_epoch(self, generator: torch.Generator) -> None:
        self.views = torch.randint(self.features.shape[1], (len(self),), generator=generator)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.runtime.to_device(x)
        return x if self.runtime.precision == "bf16" else x.float()

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        dev = self.features.device
        return self._prepare(self.features[idx.to(dev), self.views[idx].to(dev)])

    def eval_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self._prepare(self.features[idx.to(self.features.device), 0])


class ImageSource:
    """uint8 images (N, 3, S, S) [or (N, 1, 3, S, S)], augmented on the fly, through the prefix."""

    def __init__(self, images: torch.Tensor, prefix: torch.nn.Module, channels: str,
                 augmentation: bool, runtime: Runtime, augment_cfg: AugmentConfig = DEFAULT_AUGMENT):
        self.images = images[:, 0] if images.dim() == 5 else images
        self.prefix, self.channels, self.runtime = prefix.eval(), channels, runtime
        self.augmentation, self.augment_cfg = augmentation, augment_cfg
        self.params = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def start_epoch(self, generator: torch.Generator) -> None:
        if self.augmentation:
            self.params = torch.rand((len(self), N_PARAMS), generator=generator)

    @torch.no_grad()
    def _through_prefix(self, idx: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        x = to_float(self.runtime.to_device(self.images[idx]))
        if params is not None:
            x = augment(x, params, self.augment_cfg)
        x = self.runtime.to_device(to_channels(x, self.channels))
        with self.runtime.autocast():
            return self.prefix(x)

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self._through_prefix(idx, None if self.params is None else self.params[idx])

    def eval_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self._through_prefix(idx, None)


def make_optimizer(params, hyper: Hyper, momentum: float = 0.9) -> torch.optim.Optimizer:
    name = hyper.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=hyper.learning_rate, weight_decay=hyper.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hyper.learning_rate, weight_decay=hyper.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=hyper.learning_rate, momentum=momentum,
                               weight_decay=hyper.weight_decay)
    raise ConfigError(f"optimizer {hyper.optimizer!r} unknown; use one of {OPTIMIZERS}")


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Balanced weights n / (C · count_c) (absent classes get weight 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    order = torch.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def _evaluate(suffix: Suffix, source, y: torch.Tensor, batch_size: int, runtime: Runtime,
              n_classes: int) -> tuple[float, float, float]:
    suffix.eval()
    logits = []
    for idx in _batches(len(source), batch_size):
        with runtime.autocast():
            logits.append(suffix(source.eval_batch(idx)).float().cpu())
    z = torch.cat(logits)
    loss = F.cross_entropy(z, y).item()
    pred = z.argmax(1).numpy()
    y_np = y.numpy()
    return loss, float(np.mean(pred == y_np)), macro_f1(y_np, pred, n_classes, absent=0.0)


def fit(suffix: Suffix, train, y_train: np.ndarray, val, y_val: np.ndarray, hyper: Hyper, *,
        runtime: Runtime, epochs: int = 15, batch_size: int = 64, patience: int = 4,
        momentum: float = 0.9, class_weighting: bool = False, seed: int = 0,
        on_epoch: Callable[[int, float], None] | None = None, history_csv: str | Path | None = None,
        progress: bool | None = None, desc: str = "fit") -> FitResult:
    """Train ``suffix`` (in place) on ``train`` source; keep the best-val-macro-F1 state.

    Raises ``TrainingDiverged`` on a NaN/inf loss. ``on_epoch(epoch, val_macro_f1)`` is called
    after every epoch (epochs count from 1); whatever it raises propagates (e.g. Optuna pruning).
    """
    n_classes = suffix.head.fc2.out_features
    y_tr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    y_va = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    y_tr_dev = y_tr.to(runtime.device)
    weight = class_weights(y_tr.numpy(), n_classes).to(runtime.device) if class_weighting else None
    params = [p for p in suffix.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, hyper, momentum)
    generator = torch.Generator().manual_seed(seed)
    step_model = compiled(suffix, runtime)
    rows, best_state, best_f1, best_epoch, bad = [], None, -math.inf, 0, 0
    devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)   # dropout masks
        bar = tqdm(range(1, epochs + 1), desc=desc, unit="ep", leave=False,
                   disable=None if progress is None else not progress)
        for epoch in bar:
            t0 = time.perf_counter()
            suffix.train()
            train.start_epoch(generator)
            total, count = 0.0, 0
            for step, idx in enumerate(_batches(len(train), batch_size,
                                                torch.randperm(len(train), generator=generator))):
                if len(idx) < 2 and count:  # BatchNorm needs two samples; drop a lone last one
                    continue
                x = train.train_batch(idx)
                with runtime.autocast():
                    logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y_tr_dev[idx.to(runtime.device)],
                                       weight=weight)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"{desc}: training loss became {loss.item()} at epoch {epoch}, step {step} "
                        f"({hyper.optimizer}, learning_rate={hyper.learning_rate:g}, "
                        f"weight_decay={hyper.weight_decay:g}); lower the learning rate or check "
                        f"the inputs for NaN")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
            val_loss, val_acc, val_f1 = _evaluate(suffix, val, y_va, batch_size * 2, runtime,
                                                  n_classes)
            rows.append(dict(epoch=epoch, train_loss=total / count, val_loss=val_loss,
                             val_accuracy=val_acc, val_macro_f1=val_f1,
                             lr=optimizer.param_groups[0]["lr"],
                             seconds=time.perf_counter() - t0))
            bar.set_postfix(loss=f"{total / count:.3f}", val_f1=f"{val_f1:.3f}")
            if val_f1 > best_f1:
                best_f1, best_epoch, bad = val_f1, epoch, 0
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in suffix.state_dict().items()}
            else:
                bad += 1
            if on_epoch is not None:
                on_epoch(epoch, val_f1)
            if bad >= patience:
                break
        bar.close()
    suffix.load_state_dict(best_state)
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    if history_csv is not None:
        write_csv(history_csv, history)
    return FitResult(best_state, history, len(rows), best_epoch, float(best_f1))


@torch.no_grad()
def predict_outputs(suffix: Suffix, source, *, runtime: Runtime, labels: np.ndarray | None = None,
                    groups: np.ndarray | None = None, mc_samples: int = 0, mc_seed: int = 0,
                    batch_size: int = 128) -> ModelOutputs:
    """Deterministic logits + penultimate features; ``mc_probs`` (T, N, C) for dropout heads.

    MC-dropout: the head's dropout is the only stochastic layer and sits after the penultimate
    activations, so T passes reuse those activations and redraw only the dropout masks (exactly
    T full stochastic forward passes, at a fraction of the cost). Non-dropout heads → None.
    """
    suffix.eval()
    feats = []
    for idx in _batches(len(source), batch_size):
        with runtime.autocast():
            feats.append(suffix.penultimate(source.eval_batch(idx)).float().cpu())
    h = torch.cat(feats)
    fc2 = copy.deepcopy(suffix.head.fc2).float().cpu()
    logits = fc2(h)
    mc = None
    if suffix.head.dropout is not None and mc_samples > 0:
        p = suffix.head.dropout.p
        g = torch.Generator().manual_seed(mc_seed)
        mc = torch.stack([torch.softmax(fc2(h * (torch.rand(h.shape, generator=g) >= p) / (1 - p)), 1)
                          for _ in range(mc_samples)]).numpy()
    return ModelOutputs(logits=logits.numpy(), features=h.numpy(),
                        labels=None if labels is None else np.asarray(labels), mc_probs=mc,
                        groups=None if groups is None else np.asarray(groups))
