"""One training function for every model role: CPU, seconds on digits, with a progress bar.

The recipes differ on purpose: the champion is trained plainly (it is the fast production
model), while B1 and B2 see drift augmentation with different seeds and strengths so that they
stay accurate on drifted lines and their agreement is evidence of a correct label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ctloop.drift import DRIFT_KINDS, DriftKind, apply_drift
from ctloop.images import ImageSet
from ctloop.modelfile import predict_proba
from ctloop.models import Role, build_model


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model. `augment` lists the drift kinds mixed into training batches."""

    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: tuple[DriftKind, ...] = ()
    augment_share: float = 0.5
    augment_max_severity: float = 1.0


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None


RECIPES: dict[Role, TrainConfig] = {
    "champion": TrainConfig(epochs=25),
    "b1": TrainConfig(epochs=30, seed=1, augment=DRIFT_KINDS, augment_share=0.6),
    "b2": TrainConfig(epochs=60, seed=2, learning_rate=2e-3, augment=DRIFT_KINDS, augment_share=0.7),
}


def train_model(
    role: Role,
    data: ImageSet,
    config: TrainConfig | None = None,
    val: ImageSet | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: bool = True,
) -> tuple[nn.Module, list[EpochMetrics]]:
    """Train a fresh `role` model on `data`; returns it in eval mode with per-epoch metrics."""
    config = config or RECIPES[role]
    if len(data) == 0:
        raise ValueError("cannot train on an empty image set")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(role, len(data.class_names))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=config.epochs * _batches_per_epoch(len(data), config.batch_size),
    )
    history: list[EpochMetrics] = []
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {role}", disable=not progress, leave=False)
    for epoch in bar:
        loss, train_accuracy = _train_epoch(model, data, config, optimizer, schedule, rng)
        val_accuracy = accuracy(model, val) if val is not None and len(val) else None
        metrics = EpochMetrics(epoch, loss, train_accuracy, val_accuracy)
        history.append(metrics)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{train_accuracy:.3f}")
        if on_epoch is not None:
            on_epoch(metrics)
    model.eval()
    return model, history


def accuracy(model: nn.Module, data: ImageSet) -> float:
    """Share of `data` that `model` labels correctly."""
    model.eval()
    predicted = predict_proba(model, data.images).argmax(axis=1)
    return float((predicted == data.labels).mean()) if len(data) else 0.0


def with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The same recipe with another epoch count (tests and quick demos)."""
    return replace(config, epochs=epochs)


def _batches_per_epoch(size: int, batch_size: int) -> int:
    return max(1, -(-size // batch_size))


def _train_epoch(
    model: nn.Module,
    data: ImageSet,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
) -> tuple[float, float]:
    model.train()
    order = rng.permutation(len(data))
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        images = _augment(data.images[index], config, rng)
        inputs = torch.from_numpy(images).unsqueeze(1)
        targets = torch.from_numpy(data.labels[index])
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
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
