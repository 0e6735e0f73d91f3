"""Drift kinds: identity at severity 0, real change in range at 1, seeded, fast on batches."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ctloop.drift
from ctloop.drift import DRIFT_KINDS, apply_drift
from ctloop.images import ImageDataError
from ctloop.simulator import digits_split


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return digits_split(0).golden.images[:64]


def drift(images: np.ndarray, kind: str, severity: float, seed: int = 0) -> np.ndarray:
    return apply_drift(images, kind, severity, np.random.default_rng(seed))


def test_public_names() -> None:
    assert sorted(ctloop.drift.__all__) == ["DRIFT_KINDS", "DriftKind", "apply_drift", "check_drift"]
    assert DRIFT_KINDS == ("lighting", "blur", "noise", "shift")


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_each_kind_changes_every_image_and_stays_float32_in_range(clean: np.ndarray, kind: str) -> None:
    drifted = drift(clean, kind, 1.0)
    assert drifted.dtype == np.float32 and drifted.shape == clean.shape
    assert drifted.min() >= 0.0 and drifted.max() <= 1.0
    assert np.abs(drifted - clean).mean() > 0.02
    assert all(not np.array_equal(after, before) for after, before in zip(drifted, clean))


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_severity_zero_is_the_identity_and_the_input_is_untouched(clean: np.ndarray, kind: str) -> None:
    before = clean.copy()
    unchanged = drift(clean, kind, 0.0)
    np.testing.assert_array_equal(unchanged, clean)
    assert unchanged is not clean
    drift(clean, kind, 1.0)
    np.testing.assert_array_equal(clean, before)


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_stronger_severity_moves_images_further(clean: np.ndarray, kind: str) -> None:
    mild = np.abs(drift(clean, kind, 0.3) - clean).mean()
    strong = np.abs(drift(clean, kind, 1.0) - clean).mean()
    assert strong > mild > 0


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_the_generator_alone_decides_the_result(clean: np.ndarray, kind: str) -> None:
    np.testing.assert_array_equal(drift(clean, kind, 0.7, seed=3), drift(clean, kind, 0.7, seed=3))
    if kind != "blur":  # blur has no randomness
        assert not np.array_equal(drift(clean, kind, 0.7, seed=3), drift(clean, kind, 0.7, seed=4))


def test_lighting_makes_images_darker_and_flatter(clean: np.ndarray) -> None:
    drifted = drift(clean, "lighting", 1.0)
    assert drifted.mean() < 0.75 * clean.mean()
    assert drifted.std(axis=(1, 2)).mean() < 0.6 * clean.std(axis=(1, 2)).mean()


def test_blur_removes_fine_detail(clean: np.ndarray) -> None:
    def edges(images: np.ndarray) -> float:
        return float(np.abs(np.diff(images, axis=2)).mean())

    assert edges(drift(clean, "blur", 1.0)) < 0.8 * edges(clean)


def test_noise_includes_stuck_pixels() -> None:
    grey = np.full((200, 8, 8), 0.5, np.float32)
    drifted = drift(grey, "noise", 1.0)
    assert 0 < np.isin(drifted, (0.0, 1.0)).mean() < 0.1


@pytest.mark.parametrize("kind", ["lighting", "noise", "shift"])
def test_random_drift_differs_per_image(clean: np.ndarray, kind: str) -> None:
    twins = np.repeat(clean[:1], 2, axis=0)
    first, second = drift(twins, kind, 1.0)
    assert not np.array_equal(first, second)


def test_shift_moves_the_digit_but_keeps_most_of_its_ink(clean: np.ndarray) -> None:
    drifted = drift(clean, "shift", 1.0)
    ink_kept = drifted.sum(axis=(1, 2)) / clean.sum(axis=(1, 2))
    assert np.median(ink_kept) > 0.7


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_thousands_of_images_take_well_under_a_second(kind: str) -> None:
    images = np.random.default_rng(0).random((5000, 8, 8), dtype=np.float32)
    started = time.perf_counter()
    drift(images, kind, 1.0)
    assert time.perf_counter() - started < 0.5


def test_an_empty_batch_is_fine() -> None:
    assert drift(np.zeros((0, 8, 8), np.float32), "shift", 1.0).shape == (0, 8, 8)


@pytest.mark.parametrize(
    ("kind", "severity", "message"),
    [
        ("fog", 0.5, "unknown drift kind 'fog'; expected one of lighting, blur, noise, shift"),
        ("blur", 1.5, r"drift severity must be a number in \[0, 1\], got 1.5"),
        ("blur", -0.1, r"drift severity must be a number in \[0, 1\], got -0.1"),
        ("blur", float("nan"), r"drift severity must be a number in \[0, 1\], got nan"),
        ("blur", True, r"drift severity must be a number in \[0, 1\], got True"),
        ("blur", "0.5", r"drift severity must be a number in \[0, 1\], got '0.5'"),
    ],
)
def test_bad_kind_or_severity_names_the_allowed_values(
    clean: np.ndarray, kind: str, severity: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        drift(clean, kind, severity)


def test_images_outside_the_convention_are_refused() -> None:
    with pytest.raises(ImageDataError, match="apply_drift: expected float32 images, got uint8"):
        drift(np.zeros((2, 8, 8), np.uint8), "blur", 0.5)


def test_shift_fills_what_moves_in_with_the_background_not_black() -> None:
    """A part on a grey belt: the uncovered corners are belt grey, as a moved camera sees it."""
    belt = np.full((50, 32, 32), 0.45, np.float32)
    belt[:, 12:20, 12:20] = 0.8
    shifted = apply_drift(belt, "shift", 1.0, np.random.default_rng(0))
    assert shifted.min() >= 0.45 - 1e-6


@pytest.mark.parametrize("side", [8, 32, 64])
def test_noise_sticks_a_few_pixels_per_image_whatever_its_size(side: int, monkeypatch) -> None:
    """Stuck pixels only (the Gaussian part switched off), counted per image."""
    monkeypatch.setattr(ctloop.drift, "_MAX_NOISE_STD", 0.0)
    grey = np.full((400, side, side), 0.5, np.float32)
    noisy = apply_drift(grey, "noise", 1.0, np.random.default_rng(0))
    stuck_per_image = ((noisy == 0.0) | (noisy == 1.0)).sum() / len(grey)
    assert 1.5 < stuck_per_image < 2.5


def test_sensor_noise_scales_with_the_images_contrast(monkeypatch) -> None:
    """A dim part (contrast 0.25) gets a quarter of the noise of a full-range image."""
    monkeypatch.setattr(ctloop.drift, "_MAX_STUCK_PIXELS", 0.0)
    full = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (200, 32, 1))
    dim = 0.3 + 0.25 * full
    spread = [float((apply_drift(images, "noise", 1.0, np.random.default_rng(0)) - images).std())
              for images in (full, dim)]
    assert spread[1] == pytest.approx(spread[0] / 4, rel=0.15)
