"""Input drift as a two-sample test: maximum mean discrepancy (MMD) with a permutation p-value.

Are a window's inputs drawn from the distribution of the reference inputs (the champion's
training set or the golden set)? The test compares the two samples through a Gaussian kernel on
their features (the champion's penultimate-layer embeddings, or any fixed-length vectors): MMD²
is zero when both come from one distribution, and its unbiased estimate (Gretton et al., JMLR
2012) is compared with its values under random relabellings of the pooled sample. That
permutation test is exact: under no drift the p-value is uniform, so a level of 0.05 raises a
false alarm on 5 % of clean windows whatever the features, which the tests measure.

alibi-detect's MMD detector would fit, but its current release (0.13) pins numpy<2 and
Pillow<11 and pulls in transformers and numba<0.60, which this project's stack cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MmdTest", "mmd_test"]


@dataclass(frozen=True)
class MmdTest:
    """The outcome: `distance` is the unbiased MMD² estimate (can be slightly negative without
    drift), `p_value` the share of relabellings at least as far apart (counting the observed
    one), `bandwidth` the kernel's width (the median pairwise distance of the pooled sample)."""

    distance: float
    p_value: float
    bandwidth: float
    permutations: int

    def drifted(self, level: float) -> bool:
        return self.p_value <= level


def mmd_test(reference: np.ndarray, window: np.ndarray, permutations: int = 500, seed: int = 0) -> MmdTest:
    """Test whether `window` (m, d) comes from the distribution of `reference` (n, d).

    Args:
        reference: n >= 2 feature vectors of the reference inputs.
        window: m >= 2 feature vectors of the monitored inputs.
        permutations: relabellings for the p-value; its resolution is 1 / (permutations + 1).
        seed: the relabellings' seed, so a decision can be reproduced.
    """
    reference, window = _features(reference, "reference"), _features(window, "window")
    if reference.shape[1] != window.shape[1]:
        raise ValueError(f"reference has {reference.shape[1]} features, window {window.shape[1]}")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    pooled = np.concatenate([reference, window]).astype(np.float64)
    squared = _squared_distances(pooled)
    off_diagonal = squared[~np.eye(len(pooled), dtype=bool)]
    bandwidth = float(np.median(np.sqrt(off_diagonal))) or 1.0  # identical points: any width
    kernel = np.exp(-squared / (2.0 * bandwidth ** 2))
    np.fill_diagonal(kernel, 0.0)
    rng = np.random.default_rng(seed)
    n = len(reference)
    observed = np.zeros((len(pooled), 1))
    observed[:n] = 1.0
    shuffled = np.stack([rng.permutation(observed[:, 0]) for _ in range(permutations)], axis=1)
    distances = _mmd2(kernel, np.concatenate([observed, shuffled], axis=1), n, len(window))
    p_value = float((1 + np.sum(distances[1:] >= distances[0])) / (1 + permutations))
    return MmdTest(float(distances[0]), p_value, bandwidth, permutations)


def _features(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    array = array.reshape(len(array), -1) if array.ndim > 2 else array
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"{name} must hold at least 2 feature vectors, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _squared_distances(points: np.ndarray) -> np.ndarray:
    norms = np.sum(points ** 2, axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0)


def _mmd2(kernel: np.ndarray, in_reference: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD² for each column of `in_reference` (1 where a pooled point is labelled
    reference), all at once: sums of kernel blocks as quadratic forms (the diagonal is zero)."""
    to_reference = kernel @ in_reference
    to_window = kernel.sum(axis=1, keepdims=True) - to_reference
    within_reference = np.sum(in_reference * to_reference, axis=0)
    within_window = np.sum((1.0 - in_reference) * to_window, axis=0)
    across = np.sum(in_reference * to_window, axis=0)
    return within_reference / (n * (n - 1)) + within_window / (m * (m - 1)) - 2.0 * across / (n * m)
