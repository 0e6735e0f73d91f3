"""The canary batch: images with the answers the approved model gives them in-process.

analyze, which already runs the challenger, writes it; deploy sends the images to the new
TorchServe version and requires the same answers back. So the deploy stage needs no torch: the
in-process side of the smoke test was computed by the stage that had the model loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctloop.images import ImageDataError, check_images, load_arrays, save_arrays

__all__ = ["Canary"]


@dataclass(frozen=True)
class Canary:
    """images (N, H, W) float32 in [0, 1]; labels (N,) int64, the true labels, for the canary's
    accuracy; probabilities (N, classes) float32, the model's own in-process answers."""

    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        check_images(self.images, "Canary.images")
        count = len(self.images)
        if count == 0:
            raise ImageDataError("Canary: no images; a smoke test needs at least one")
        if self.labels.shape != (count,) or self.probabilities.ndim != 2 or len(self.probabilities) != count:
            raise ImageDataError(f"Canary: {count} images but labels of shape {self.labels.shape} and "
                                 f"probabilities of shape {self.probabilities.shape}")

    def save(self, path: str | Path) -> None:
        """Write as .npz (no pickled objects), atomically."""
        save_arrays(path, images=self.images, labels=self.labels, probabilities=self.probabilities)

    @classmethod
    def load(cls, path: str | Path) -> "Canary":
        """Read a canary written by `save`; an ImageDataError names the file if it is not one."""
        arrays = load_arrays(path, ("images", "labels", "probabilities"), "canary batch")
        try:
            return cls(arrays["images"].astype(np.float32, copy=False), arrays["labels"].astype(np.int64, copy=False),
                       arrays["probabilities"].astype(np.float32, copy=False))
        except ImageDataError as error:
            raise ImageDataError(f"{path}: {error}") from error
