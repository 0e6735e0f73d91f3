"""One training function for every model role: CPU, with early stopping and a time cap.

Training converges on its own rather than running a fixed epoch count: a stratified share of the
data (grouped so that repeated rows never sit on both sides) is held back, the learning rate
falls when its loss stops improving, training stops when it has not improved for `patience`
epochs or when `max_seconds` is spent, and the weights of the best epoch are kept. `epochs` is
only a ceiling. Batches are drawn class-balanced, so a rare defect class is seen as often as the
common "ok" one. Retraining can start from the champion's weights (`initial_state`).

The recipes differ on purpose. The champion is trained plainly by default (it is the fast
production model, and what the monitor watches), while B1 and B2 see drift augmentation in most
of their batches, with different seeds and strengths, so that they stay accurate on drifted
lines and their agreement is evidence of a correct label. `champion_recipe(severity)` gives the
champion mild augmentation as well (config `champion_augment`), see its docstring for the trade.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ctloop.drift import DRIFT_KINDS, DriftKind, apply_drift
from ctloop.images import ImageSet, stratified_split
from ctloop.modelfile import predict_proba
from ctloop.models import Role, build_model


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model. `augment` lists the drift kinds mixed into training batches;
    `epochs` is a ceiling, `patience` epochs without a better stopping loss end training early."""

    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: tuple[DriftKind, ...] = ()
    augment_share: float = 0.5
    augment_max_severity: float = 1.0
    stopping_share: float = 0.15
    patience: int = 8
    max_seconds: float | None = None
    family: str | None = None


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    stopping_loss: float | None = None
    learning_rate: float | None = None


RECIPES: dict[Role, TrainConfig] = {
    "champion": TrainConfig(),
    "b1": TrainConfig(seed=1, augment=DRIFT_KINDS, augment_share=0.8),
    "b2": TrainConfig(seed=2, learning_rate=2e-3, augment=DRIFT_KINDS, augment_share=0.85),
}


def champion_recipe(augment_severity: float = 0.0) -> TrainConfig:
    """The champion's recipe, with drift augmentation in half its batches up to `augment_severity`
    (0: none, the default).

    The trade, measured with `make bench`'s learning section (seed 0) at 0.5: on the 32x32 parts
    line the bootstrap champion's golden accuracy rose from 0.945 to 0.962 and the retrained
    champion gained 0.05 to 0.15 under blur, noise and shift; but the champion is then right on
    most of the parts B1 and B2 agree on, so the pseudo-labelled holdout shows analyze fewer
    parts where only the challenger is right, and on 200-300 part windows of digits the evidence
    rule refused challengers that were better (4 such parts against 0: McNemar p = 0.06).
    """
    if not 0.0 <= augment_severity <= 1.0:
        raise ValueError(f"augment_severity must be in [0, 1], got {augment_severity}")
    if augment_severity == 0:
        return RECIPES["champion"]
    return replace(RECIPES["champion"], augment=DRIFT_KINDS, augment_share=0.5, augment_max_severity=augment_severity)


def train_model(
    role: Role,
    data: ImageSet,
    config: TrainConfig | None = None,
    val: ImageSet | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, list[EpochMetrics]]:
    """Train a `role` model on `data` (from `initial_state` when given, else freshly initialised);
    returns the best epoch's model in eval mode with per-epoch metrics. `val` is only reported
    (the analyze stage judges on it, so it must not steer training)."""
    config = config or RECIPES[role]
    if len(data) == 0:
        raise ValueError("cannot train on an empty image set")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(role, len(data.class_names), data.image_size, config.family)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    fit, stopping = _stopping_split(data, config.stopping_share, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=max(1, config.patience // 3))
    history: list[EpochMetrics] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    started = time.monotonic()
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {role}", disable=not progress, leave=False)
    for epoch in bar:
        loss, train_accuracy = _train_epoch(model, fit, config, optimizer, rng)
        stopping_loss = _loss(model, stopping) if stopping is not None else loss
        schedule.step(stopping_loss)
        metrics = EpochMetrics(epoch, loss, train_accuracy, accuracy(model, val) if val is not None and len(val) else None,
                               stopping_loss, optimizer.param_groups[0]["lr"])
        history.append(metrics)
        bar.set_postfix(loss=f"{loss:.3f}", stop=f"{stopping_loss:.3f}")
        if on_epoch is not None:
            on_epoch(metrics)
        if best is None or stopping_loss < best[0]:
            best = (stopping_loss, copy.deepcopy(model.state_dict()))
        if _should_stop(history, config, time.monotonic() - started):
            break
    model.load_state_dict(best[1])
    model.eval()
    return model, history


def _should_stop(history: list[EpochMetrics], config: TrainConfig, seconds: float) -> bool:
    """No better stopping loss for `patience` epochs, or the time cap is spent."""
    if config.max_seconds is not None and seconds >= config.max_seconds:
        return True
    losses = [metrics.stopping_loss for metrics in history]
    return len(losses) > config.patience and min(losses[-config.patience:]) >= min(losses[:-config.patience])


def _stopping_split(data: ImageSet, share: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """(fit, stopping): about `share` of each class held back to stop on, split by distinct image
    so that the copies of a repeated row all land on one side; no split for tiny sets."""
    if share <= 0 or len(data) < 20:
        return data, None
    _, group = np.unique(data.images.reshape(len(data), -1), axis=0, return_inverse=True)
    group = group.reshape(-1)
    first = np.unique(group, return_index=True)[1]
    _, stop_groups = stratified_split(data.labels[first], share, seed)
    held = np.isin(group, group[first][stop_groups])
    if not held.any() or held.all():
        return data, None
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


@torch.inference_mode()
def _loss(model: nn.Module, data: ImageSet) -> float:
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(data.images)).unsqueeze(1))
    return float(nn.functional.cross_entropy(logits, torch.from_numpy(data.labels)))


def accuracy(model: nn.Module, data: ImageSet) -> float:
    """Share of `data` that `model` labels correctly."""
    model.eval()
    predicted = predict_proba(model, data.images).argmax(axis=1)
    return float((predicted == data.labels).mean()) if len(data) else 0.0


def with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The same recipe with another epoch count (tests and quick demos)."""
    return replace(config, epochs=epochs)


def _balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch of indices, as many as rows, drawn so that every class is equally likely."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


def _train_epoch(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> tuple[float, float]:
    model.train()
    order = _balanced_order(data.labels, rng)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        if len(index) < 2:  # batch norm cannot train on a single image
            continue
        images = _augment(data.images[index], config, rng)
        inputs = torch.from_numpy(images).unsqueeze(1)
        targets = torch.from_numpy(data.labels[index])
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        correct += int((logits.argmax(dim=1) == targets).sum())
    return total_loss / len(order), correct / len(order)


def _augment(images: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Replace a share of the batch by drifted copies of random kind and severity."""
    if not config.augment:
        return images
    images = images.copy()
    chosen = np.flatnonzero(rng.random(len(images)) < config.augment_share)
    for kind_index, part in enumerate(np.array_split(rng.permutation(chosen), len(config.augment))):
        if len(part):
            severity = float(rng.uniform(0.0, config.augment_max_severity))
            images[part] = apply_drift(images[part], config.augment[kind_index], severity, rng)
    return images
