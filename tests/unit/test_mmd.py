"""ctloop.mmd: the drift test's level measured over many clean windows, its power on each
simulated drift kind, and its statistic against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ctloop.drift import DRIFT_KINDS, apply_drift
from ctloop.mmd import mmd_test

LEVEL = 0.05


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images / 16.0).astype(np.float32)


def split(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference of 300 images and a window of 100 others, drawn at random."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[:300]], images[order[300:400]]


def test_clean_windows_raise_false_alarms_at_the_level(digits: np.ndarray) -> None:
    """The permutation test is exact: on 200 clean windows the alarm rate stays near 5 % and the
    p-values spread evenly over (0, 1]."""
    p_values = np.array([mmd_test(*split(digits, seed), permutations=200, seed=seed).p_value for seed in range(200)])
    false_alarms = float(np.mean(p_values <= LEVEL))
    assert 0.01 <= false_alarms <= 0.09, false_alarms  # 200 windows: 5 % +- 2 standard errors, and then some
    assert 0.4 <= float(np.mean(p_values)) <= 0.6


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_each_simulated_drift_is_detected(digits: np.ndarray, kind: str) -> None:
    detected = 0
    for seed in range(20):
        reference, window = split(digits, seed)
        drifted = apply_drift(window, kind, 1.0, np.random.default_rng(seed))
        detected += mmd_test(reference, drifted, permutations=200, seed=seed).drifted(LEVEL)
    assert detected >= 19, f"{kind}: {detected} of 20 windows"


def test_the_statistic_is_the_unbiased_mmd_squared() -> None:
    rng = np.random.default_rng(3)
    reference, window = rng.normal(size=(7, 3)), rng.normal(0.5, size=(5, 3))
    result = mmd_test(reference, window, permutations=10)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * result.bandwidth ** 2)))

    n, m = len(reference), len(window)
    xx = sum(k(reference[i], reference[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(window[i], window[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in reference for b in window) / (n * m)
    assert result.distance == pytest.approx(xx + yy - 2 * xy)
    pooled = np.concatenate([reference, window])
    distances = [np.linalg.norm(a - b) for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j]
    assert result.bandwidth == pytest.approx(float(np.median(distances)))


def test_a_far_window_gets_the_smallest_p_value_the_permutations_allow() -> None:
    rng = np.random.default_rng(4)
    result = mmd_test(rng.normal(size=(50, 4)), rng.normal(3.0, size=(50, 4)), permutations=99)
    assert result.p_value == pytest.approx(1 / 100) and result.distance > 0.5


@pytest.mark.parametrize(
    ("reference", "window", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "reference has 3 features, window 4"),
        (np.zeros((1, 3)), np.zeros((5, 3)), r"reference must hold at least 2 feature vectors, got shape \(1, 3\)"),
        (np.zeros((5, 3)), np.full((5, 3), np.nan), "window holds NaN or infinite values"),
    ],
)
def test_bad_samples_are_refused(reference: np.ndarray, window: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mmd_test(reference, window)
