"""CollectedSet: the collect stage's output, read by validate and consensus-filter.

A contract between stages, so it lives in the library: no stage imports another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctloop.images import ImageDataError, load_arrays, save_arrays

__all__ = ["UNLABELLED", "CollectedSet"]

UNLABELLED = -1
_KEYS = ("images", "labels", "is_new", "server_ids", "items", "class_names")


@dataclass(frozen=True)
class CollectedSet:
    """New and previous samples side by side; content checks are the validate stage's job.

    Attributes:
        images: (N, H, W) float32 in [0, 1] as written by collect (load does not cast, so that
            validate sees what is really stored).
        labels: (N,) int64 class ids; -1 for a new sample without ground truth.
        is_new: (N,) bool, True for samples of the monitored window.
        server_ids: (N,) str, TorchServe's request id of the prediction for new rows (with
            `items`, the record's key), "" for previous rows.
        items: (N,) int64, the sample's position in its request for new rows, -1 for previous rows.
        class_names: the class names, indexed by label id.
    """

    images: np.ndarray
    labels: np.ndarray
    is_new: np.ndarray
    server_ids: np.ndarray
    items: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.images)
        for name in ("labels", "is_new", "server_ids", "items"):
            shape = getattr(self, name).shape
            if shape != (count,):
                raise ImageDataError(f"CollectedSet: {count} images but {name} of shape {shape}")

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> None:
        """Write as .npz (no pickled objects), atomically."""
        save_arrays(path, images=self.images, labels=self.labels, is_new=self.is_new,
                    server_ids=np.asarray(self.server_ids, dtype=np.str_), items=self.items,
                    class_names=np.array(self.class_names, dtype=np.str_))

    @classmethod
    def load(cls, path: str | Path) -> "CollectedSet":
        """Read a set written by `save`; raise ImageDataError naming the file if it is not one."""
        arrays = load_arrays(path, _KEYS, "collected set")
        try:
            return cls(
                images=arrays["images"],
                labels=arrays["labels"],
                is_new=arrays["is_new"],
                server_ids=arrays["server_ids"],
                items=arrays["items"],
                class_names=tuple(str(name) for name in arrays["class_names"]),
            )
        except ImageDataError as error:
            raise ImageDataError(f"{path}: {error}") from error
