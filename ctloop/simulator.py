"""A production line built on scikit-learn's bundled digits: seeded streams with drift.

`digits_split` divides the 1,797 bundled 8x8 digits into disjoint, stratified training, golden
and production pools. A `ProductionLine` draws parts from the production pool (with
replacement, seeded) and, from a chosen stream position on, drifts them with one drift kind and
severity. The drift's own random choices come from a generator seeded once per line, so the same
seed gives the same stream, part for part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

from ctloop.drift import DriftKind, apply_drift, check_drift
from ctloop.images import ImageSet

SPLIT_SHARES = {"train": 0.5, "golden": 0.2}


@dataclass(frozen=True)
class DigitsSplit:
    train: ImageSet
    golden: ImageSet
    production: ImageSet


@dataclass(frozen=True)
class DriftSpec:
    """Drift of `kind` at `severity` from stream position `start` on."""

    kind: DriftKind
    severity: float
    start: int

    def __post_init__(self) -> None:
        check_drift(self.kind, self.severity)
        if self.start < 0:
            raise ValueError(f"drift start must be a stream position >= 0, got {self.start}")


def digits_split(seed: int = 0) -> DigitsSplit:
    """Stratified, disjoint ~50 % train, ~20 % golden, ~30 % production pool of the digits."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    names = tuple(str(name) for name in digits.target_names)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "golden": [], "production": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        train_end = int(round(len(members) * SPLIT_SHARES["train"]))
        golden_end = train_end + int(round(len(members) * SPLIT_SHARES["golden"]))
        parts["train"] += members[:train_end].tolist()
        parts["golden"] += members[train_end:golden_end].tolist()
        parts["production"] += members[golden_end:].tolist()
    sets = {name: ImageSet(images[np.sort(index)], labels[np.sort(index)], names) for name, index in parts.items()}
    return DigitsSplit(**sets)


class ProductionLine:
    """A reproducible stream of labelled parts; labels are the true labels."""

    def __init__(self, pool: ImageSet, seed: int = 0, drift: DriftSpec | None = None) -> None:
        if len(pool) == 0:
            raise ValueError("a production line needs a non-empty pool of parts")
        self.pool = pool
        self.drift = drift
        self._draws = np.random.default_rng(seed)
        self._drift_rng = np.random.default_rng([seed, 1])
        self._position = 0

    @property
    def position(self) -> int:
        """How many parts have been taken so far."""
        return self._position

    def take(self, n: int) -> ImageSet:
        """The next `n` parts; those at stream position >= drift.start are drifted."""
        if n < 0:
            raise ValueError(f"cannot take {n} parts")
        index = self._draws.integers(0, len(self.pool), size=n)
        images = self.pool.images[index].copy()
        if self.drift is not None:
            first = max(0, self.drift.start - self._position)
            if first < n:
                images[first:] = apply_drift(images[first:], self.drift.kind, self.drift.severity, self._drift_rng)
        self._position += n
        return ImageSet(images, self.pool.labels[index], self.pool.class_names)
