"""A simulated production line built on scikit-learn's bundled 8x8 digits (no downloads).

`digits_split` makes the three fixed data sets of the loop: training data, a golden set that
every candidate model is judged on, and a pool that the production line draws from.
`ProductionLine` turns the pool into an endless, seeded stream of samples that can start to
drift at a chosen index, so a whole continuous-training run is reproducible from its seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ctloop.drift import DriftKind, apply_drift, check_drift
from ctloop.images import ImageSet

__all__ = ["DigitsSplit", "DriftSpec", "ProductionLine", "digits_split"]

_TRAIN_FRACTION = 0.5
_GOLDEN_FRACTION = 0.2  # the remaining 30 % is the production pool
_DIGITS_MAX = 16.0  # load_digits pixels are counts 0..16
_BLOCK = 256  # the stream is generated in blocks of this many samples


@dataclass(frozen=True)
class DigitsSplit:
    """Disjoint, stratified parts of the digits data."""

    train: ImageSet
    golden: ImageSet
    production: ImageSet


def digits_split(seed: int = 0) -> DigitsSplit:
    """Split the 1797 digits ~50/20/30 into train, golden and production pool, per class.

    Stratified so that every part has every digit in the same proportion; a golden set short of
    one class would judge models on the others only.
    """
    digits = load_digits()
    images = (digits.images / _DIGITS_MAX).astype(np.float32)
    labels = digits.target.astype(np.int64)
    everything = ImageSet(images, labels, tuple(str(name) for name in digits.target_names))
    return stratified_line_split(everything, seed)


def stratified_line_split(everything: ImageSet, seed: int) -> DigitsSplit:
    """Train (50 %), golden (20 %) and production (30 %) parts of a simulated line's images,
    stratified by class; each part keeps the images' order."""
    labels = everything.labels
    train, rest = train_test_split(
        np.arange(len(labels)), train_size=_TRAIN_FRACTION, stratify=labels, random_state=seed
    )
    golden, production = train_test_split(
        rest,
        train_size=_GOLDEN_FRACTION / (1.0 - _TRAIN_FRACTION),
        stratify=labels[rest],
        random_state=seed,
    )
    return DigitsSplit(
        train=everything.subset(np.sort(train)),
        golden=everything.subset(np.sort(golden)),
        production=everything.subset(np.sort(production)),
    )


@dataclass(frozen=True)
class DriftSpec:
    """Drift of `kind` at `severity` affecting every sample from stream index `start` on."""

    kind: DriftKind
    severity: float
    start: int

    def __post_init__(self) -> None:
        check_drift(self.kind, self.severity)
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"drift start must be a stream index >= 0, got {self.start!r}")


class ProductionLine:
    """A seeded stream of samples drawn with replacement from `pool`, drifting from drift.start.

    The stream is cut into fixed blocks and block b is generated from the seed (seed, b) alone,
    so the samples depend only on their stream index: take(5) twice gives the same samples as
    take(10) once, and the same seed with or without drift gives the same underlying samples and
    labels. Drift is applied to a whole block with that block's generator and kept from
    drift.start on, so the drifted distribution is the same at every point of the stream.
    """

    def __init__(self, pool: ImageSet, seed: int = 0, drift: DriftSpec | None = None) -> None:
        if len(pool) == 0:
            raise ValueError("ProductionLine: the pool is empty; it needs at least one sample")
        self._pool = pool
        self._seed = seed
        self._drift = drift
        self._position = 0
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def position(self) -> int:
        """How many samples have been taken so far (the stream index of the next one)."""
        return self._position

    def take(self, n: int) -> ImageSet:
        """The next `n` samples of the stream, with their true labels."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"take: n must be an integer >= 0, got {n!r}")
        start, stop = self._position, self._position + n
        first = start // _BLOCK
        blocks = [self._block(block) for block in range(first, max(-(-stop // _BLOCK), first + 1))]
        window = slice(start - first * _BLOCK, stop - first * _BLOCK)
        self._position = stop
        return ImageSet(
            np.concatenate([images for images, _ in blocks])[window],
            np.concatenate([labels for _, labels in blocks])[window],
            self._pool.class_names,
        )

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of stream indices [block * _BLOCK, (block + 1) * _BLOCK)."""
        if self._cached is not None and self._cached[0] == block:
            return self._cached[1], self._cached[2]
        rng = np.random.default_rng([self._seed, block])
        index = rng.integers(0, len(self._pool), _BLOCK)
        images = self._pool.images[index]
        labels = self._pool.labels[index]
        first = block * _BLOCK
        if self._drift is not None and self._drift.start < first + _BLOCK:
            drifted = apply_drift(images, self._drift.kind, self._drift.severity, rng)
            from_index = max(self._drift.start - first, 0)
            images[from_index:] = drifted[from_index:]
        self._cached = (block, images, labels)
        return images, labels
