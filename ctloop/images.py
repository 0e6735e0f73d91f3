"""Image conventions shared by every stage, the trainer and the serving handlers.

An image set is a float32 array of shape (N, H, W) with values in [0, 1] (grey), plus int64
labels and the class names. Keeping one convention means a sample stored by the champion
handler can be fed to training or to the branch models without conversion.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ImageDataError(ValueError):
    """A user's data is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageSet:
    """Labelled grey images: images (N, H, W) float32 in [0, 1], labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        check_images(self.images, "ImageSet.images")
        if self.labels.shape != (len(self.images),):
            raise ImageDataError(
                f"ImageSet: {len(self.images)} images but labels of shape {self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ImageDataError(
                f"ImageSet: label ids must be in [0, {len(self.class_names) - 1}], "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    def subset(self, index: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.class_names)

    def save(self, path: str | Path) -> None:
        """Write as .npz (no pickled objects), atomically."""
        save_arrays(path, images=self.images, labels=self.labels, class_names=np.array(self.class_names, np.str_))

    @classmethod
    def load(cls, path: str | Path) -> "ImageSet":
        arrays = load_arrays(path, ("images", "labels", "class_names"), "ctloop image set")
        try:
            return cls(
                images=arrays["images"].astype(np.float32, copy=False),
                labels=arrays["labels"].astype(np.int64, copy=False),
                class_names=tuple(str(name) for name in arrays["class_names"]),
            )
        except (ImageDataError, ValueError) as error:
            raise ImageDataError(f"{path}: {error}") from error


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Named arrays as one compressed .npz (no pickled objects), written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_arrays(path: str | Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The named arrays of an .npz written by save_arrays, never unpickling; an ImageDataError
    names the file when it is missing, unreadable, or not a `what` (lacks one of `keys`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"{path}: no such {what}")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            missing = [key for key in keys if key not in data.files]
            if missing:
                raise ImageDataError(f"{path}: not a {what}, it lacks {', '.join(missing)}")
            return {key: data[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ImageDataError):
            raise
        raise ImageDataError(f"{path}: not a readable {what} ({error})") from error


def check_images(images: np.ndarray, where: str) -> None:
    """Raise ImageDataError unless `images` is a finite float32 (N, H, W) array in [0, 1]."""
    if not isinstance(images, np.ndarray) or images.ndim != 3:
        shape = getattr(images, "shape", type(images).__name__)
        raise ImageDataError(f"{where}: expected images of shape (N, H, W), got {shape}")
    if images.dtype != np.float32:
        raise ImageDataError(f"{where}: expected float32 images, got {images.dtype}")
    if images.size and not np.isfinite(images).all():
        raise ImageDataError(f"{where}: images contain NaN or infinite values")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ImageDataError(
            f"{where}: pixel values must be in [0, 1], got [{images.min():.3g}, {images.max():.3g}]"
        )


def stratified_split(labels: np.ndarray, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `val_ratio` of each class held out, never a class's last sample."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = min(len(members) - 1, int(round(len(members) * val_ratio)))
        val.extend(members[:held])
        train.extend(members[held:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
