"""The canary batch analyze hands to deploy: a round trip without pickles, and errors that name
the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctloop.canary import Canary
from ctloop.images import ImageDataError, ImageSet


def canary(count: int = 3) -> Canary:
    rng = np.random.default_rng(0)
    return Canary(rng.random((count, 8, 8), dtype=np.float32), np.arange(count, dtype=np.int64),
                  rng.random((count, 10)).astype(np.float32))


def test_round_trip(tmp_path: Path) -> None:
    written = canary()
    written.save(tmp_path / "canary.npz")
    read = Canary.load(tmp_path / "canary.npz")
    for name in ("images", "labels", "probabilities"):
        np.testing.assert_array_equal(getattr(read, name), getattr(written, name))


@pytest.mark.parametrize(("labels", "probabilities"), [(np.arange(2), np.zeros((3, 10))), (np.arange(3), np.zeros(3))])
def test_misaligned_arrays_are_refused(labels: np.ndarray, probabilities: np.ndarray) -> None:
    with pytest.raises(ImageDataError, match=r"^Canary: 3 images but labels of shape"):
        Canary(np.zeros((3, 8, 8), np.float32), labels, probabilities)


def test_an_empty_canary_is_refused() -> None:
    with pytest.raises(ImageDataError, match="no images; a smoke test needs at least one"):
        Canary(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), np.zeros((0, 10), np.float32))


def test_an_image_set_is_not_a_canary(tmp_path: Path) -> None:
    ImageSet(np.zeros((2, 8, 8), np.float32), np.zeros(2, np.int64), ("a", "b")).save(tmp_path / "golden.npz")
    with pytest.raises(ImageDataError, match=rf"^{tmp_path}/golden.npz: not a canary batch, it lacks probabilities$"):
        Canary.load(tmp_path / "golden.npz")
