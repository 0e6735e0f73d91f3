"""Synthetic drift of production-line images: lighting, blur, sensor noise, camera shift.

The same functions make the simulated production stream drift and serve as training
augmentation, so they work on whole batches at once (one vectorised call per batch, no Python
loop per image). Severity 0 is the identity and severity 1 is strong drift that still leaves a
digit readable to a person, so a model that fails at 1 has a real robustness problem.
"""

from __future__ import annotations

import numbers
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

from ctloop.images import check_images

__all__ = ["DRIFT_KINDS", "DriftKind", "apply_drift", "check_drift"]

DriftKind = Literal["lighting", "blur", "noise", "shift"]
DRIFT_KINDS: tuple[DriftKind, ...] = get_args(DriftKind)

# Strength of each effect at severity 1, tuned on the 8x8 digits: a champion trained without
# augmentation loses 10 to 50 points of accuracy, while models trained with drift augmentation
# still read 80-99 % of the golden set, so the digit is still there to be read.
_MAX_GAIN_DROP = 0.6  # lighting: contrast falls to 40 %
_MAX_BIAS = 0.05  # lighting: a faint grey veil, so the background is no longer pure black
_LIGHTING_JITTER = 0.1  # lighting: per-image relative spread of gain and bias
_MAX_BLUR_SIGMA = 1.0  # blur: Gaussian sigma in pixels
_MAX_NOISE_STD = 0.2  # noise: Gaussian sensor noise, as a share of each image's contrast (max - min)
_MAX_STUCK_PIXELS = 2.0  # noise: pixels stuck dark or bright per image (3 % of an 8x8 digit)
_MAX_ANGLE_DEGREES = 20.0  # shift: per-image rotation in [-a, a]
_MAX_OFFSET_FRACTION = 0.15  # shift: per-image translation, as a share of the image side


def check_drift(kind: str, severity: float) -> None:
    """Raise ValueError unless `kind` is a drift kind and `severity` a number in [0, 1].

    Public so that a drift specification can be rejected when it is written, not when the
    first drifted sample is drawn.
    """
    if kind not in DRIFT_KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; expected one of {', '.join(DRIFT_KINDS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, numbers.Real)
        or not 0.0 <= severity <= 1.0
    ):
        raise ValueError(f"drift severity must be a number in [0, 1], got {severity!r}")


def apply_drift(
    images: np.ndarray, kind: DriftKind, severity: float, rng: np.random.Generator
) -> np.ndarray:
    """Return a drifted copy of `images` (float32 (N, H, W) in [0, 1]).

    Args:
        images: the clean batch; it is not modified.
        kind: which drift, one of DRIFT_KINDS.
        severity: 0 returns an unchanged copy, 1 the strongest drift.
        rng: source of the per-image randomness, so a seeded caller gets reproducible output.
    """
    check_drift(kind, severity)
    check_images(images, "apply_drift")
    if severity == 0 or len(images) == 0:
        return images.copy()
    drifted = _DRIFTS[kind](images, float(severity), rng)
    return np.clip(drifted, 0.0, 1.0).astype(np.float32, copy=False)


def _lighting(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Darker, flatter images (an ageing lamp): lower gain, a small veil, jitter per image."""
    n = len(images)
    gain = (1.0 - _MAX_GAIN_DROP * severity) * (1.0 + _LIGHTING_JITTER * rng.standard_normal(n))
    bias = _MAX_BIAS * severity * (1.0 + _LIGHTING_JITTER * rng.standard_normal(n))
    return images * gain[:, None, None].astype(np.float32) + bias[:, None, None].astype(np.float32)


def _blur(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus camera: separable Gaussian over each image's rows and columns only."""
    sigma = _MAX_BLUR_SIGMA * severity
    return ndimage.gaussian_filter(images, sigma=(0.0, sigma, sigma), mode="constant")


def _noise(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: Gaussian noise on every pixel plus a few pixels stuck dark or bright (a
    count per image, not a share: on a 64x64 part a share tuned on 8x8 digits would scatter
    ~120 dots that look like the holes and cracks a line inspects for). The Gaussian part scales
    with the image's contrast, so severity 1 means the same signal-to-noise on a dim part on a
    grey belt as on a white digit on black (whose contrast is 1)."""
    contrast = (images.max(axis=(1, 2)) - images.min(axis=(1, 2)))[:, None, None]
    noise = rng.normal(0.0, _MAX_NOISE_STD * severity, images.shape).astype(np.float32)
    noisy = images + noise * contrast
    stuck = rng.random(images.shape) < _MAX_STUCK_PIXELS * severity / (images.shape[1] * images.shape[2])
    noisy[stuck] = rng.integers(0, 2, int(stuck.sum())).astype(np.float32)
    return noisy


def _shift(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A knocked camera: each image rotated about its centre and translated a little.

    One map_coordinates call over the whole batch (the first coordinate picks the image), so a
    batch of thousands costs about as much as one ndimage call, not thousands of them.
    """
    n, height, width = images.shape
    angle = np.deg2rad(rng.uniform(-_MAX_ANGLE_DEGREES, _MAX_ANGLE_DEGREES, n) * severity)
    max_offset = _MAX_OFFSET_FRACTION * severity * min(height, width)
    offset = rng.uniform(-max_offset, max_offset, (2, n))
    index, rows, cols = np.indices(images.shape, dtype=np.float64)
    rows -= (height - 1) / 2
    cols -= (width - 1) / 2
    cos = np.cos(angle)[:, None, None]
    sin = np.sin(angle)[:, None, None]
    source_rows = cos * rows - sin * cols + (height - 1) / 2 - offset[0][:, None, None]
    source_cols = sin * rows + cos * cols + (width - 1) / 2 - offset[1][:, None, None]
    coordinates = np.stack([index, source_rows, source_cols])
    # order=1 interpolates linearly, so no value leaves the input's range. What moved in from
    # outside the frame is each image's median (the background: black for digits, the belt for
    # parts), not black, which on a grey belt would be an artefact to learn.
    shifted = ndimage.map_coordinates(images, coordinates, order=1, mode="constant", cval=np.nan)
    background = np.median(images.reshape(n, -1), axis=1)[:, None, None]
    return np.where(np.isnan(shifted), background, shifted)


_DRIFTS = {"lighting": _lighting, "blur": _blur, "noise": _noise, "shift": _shift}
