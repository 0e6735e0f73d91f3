"""collect: the monitored window's stored samples, optionally merged with the previous training set.

The result is a CollectedSet: new rows (from the window, unlabelled unless ground-truth feedback
gave their label) and previous rows (labelled). Every new sample survives the merge, even one
whose pixels equal a previous sample's: it is a new observation of production, and the
consensus filter must see it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.monitor.logic import read_predictions
from ctloop.images import ImageDataError, ImageSet, write_atomic
from serving.store import SHARD_PATTERN, PredictionStoreError, load_samples

__all__ = ["UNLABELLED", "CollectSummary", "CollectedSet", "collect_window"]

UNLABELLED = -1
_KEYS = ("images", "labels", "is_new", "request_ids", "items", "class_names")


@dataclass(frozen=True)
class CollectedSet:
    """New and previous samples side by side; content checks are the validate stage's job.

    Attributes:
        images: (N, H, W) float32 in [0, 1] as written by collect (load does not cast, so that
            validate sees what is really stored).
        labels: (N,) int64 class ids; -1 for a new sample without ground truth.
        is_new: (N,) bool, True for samples of the monitored window.
        request_ids: (N,) str, the prediction's request id for new rows, "" for previous rows.
        items: (N,) int64, the sample's position in its request for new rows, -1 for previous rows.
        class_names: the class names, indexed by label id.
    """

    images: np.ndarray
    labels: np.ndarray
    is_new: np.ndarray
    request_ids: np.ndarray
    items: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.images)
        for name in ("labels", "is_new", "request_ids", "items"):
            shape = getattr(self, name).shape
            if shape != (count,):
                raise ImageDataError(f"CollectedSet: {count} images but {name} of shape {shape}")

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> None:
        """Write as .npz (no pickled objects), atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            images=self.images,
            labels=self.labels,
            is_new=self.is_new,
            request_ids=np.asarray(self.request_ids, dtype=np.str_),
            items=self.items,
            class_names=np.array(self.class_names, dtype=np.str_),
        )
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "CollectedSet":
        """Read a set written by `save`; raise ImageDataError naming the file if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise ImageDataError(f"{path}: no such collected set")
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                missing = [key for key in _KEYS if key not in data.files]
                if missing:
                    raise ImageDataError(f"{path}: not a collected set, it lacks {', '.join(missing)}")
                arrays = {key: data[key] for key in _KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            if isinstance(error, ImageDataError):
                raise
            raise ImageDataError(f"{path}: not a readable collected set ({error})") from error
        try:
            return cls(
                images=arrays["images"],
                labels=arrays["labels"],
                is_new=arrays["is_new"],
                request_ids=arrays["request_ids"],
                items=arrays["items"],
                class_names=tuple(str(name) for name in arrays["class_names"]),
            )
        except ImageDataError as error:
            raise ImageDataError(f"{path}: {error}") from error


@dataclass(frozen=True)
class CollectSummary:
    """What collect wrote.

    Attributes:
        out: the CollectedSet file.
        new_samples: samples from the monitored window.
        labelled_new: new samples with a ground-truth label from feedback.
        previous_samples: samples merged in from the previous training set.
        image_size: (H, W) of every sample.
    """

    out: Path
    new_samples: int
    labelled_new: int
    previous_samples: int
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "new_samples": self.new_samples,
            "labelled_new": self.labelled_new,
            "previous_samples": self.previous_samples,
            "total_samples": self.new_samples + self.previous_samples,
            "image_size": list(self.image_size),
        }


def collect_window(
    window_records: Path,
    store_dir: Path,
    out: Path,
    previous_train: Path | None,
    class_names: Sequence[str],
) -> CollectSummary:
    """Fetch the window's samples from the store, merge the previous training set, save the result.

    Args:
        window_records: the monitor's window JSONL (prediction records, with `feedback_label`
            where ground truth is known).
        store_dir: the prediction store the records' `sample` references point into.
        out: where to write the CollectedSet (.npz).
        previous_train: the previous training set (ImageSet .npz) to merge; None: new samples only.
        class_names: the champion's class names, indexed by label id.

    Returns:
        The counts written.

    Raises:
        ImageDataError: the window is empty, a sample reference is bad or its file missing, a
            feedback label is out of range, or the previous set does not match (class names,
            image size); the message names the file or the reference.
    """
    window_records, store_dir = Path(window_records), Path(store_dir)
    class_names = tuple(str(name) for name in class_names)
    try:
        records, truncated, broken = read_predictions(window_records)
    except ValueError as error:
        raise ImageDataError(str(error)) from error
    if truncated or broken:
        where = "the last record is" if truncated else f"line {broken[0]} is"
        raise ImageDataError(f"{window_records}: {where} cut short; rerun the monitor stage")
    if not records:
        raise ImageDataError(f"{window_records}: the window holds no predictions; nothing to collect")

    images = _load_window_samples(store_dir, [record["sample"] for record in records])
    labels = np.array([_feedback_label(record, class_names, window_records) for record in records], dtype=np.int64)
    new = CollectedSet(
        images=images,
        labels=labels,
        is_new=np.ones(len(records), dtype=bool),
        request_ids=np.array([record["request_id"] for record in records], dtype=np.str_),
        items=np.array([record.get("item", 0) for record in records], dtype=np.int64),
        class_names=class_names,
    )
    previous = _load_previous(Path(previous_train), class_names, images.shape[1:]) if previous_train else None
    merged = new if previous is None else _merge(new, previous)
    merged.save(out)
    return CollectSummary(
        out=Path(out),
        new_samples=len(new),
        labelled_new=int((labels != UNLABELLED).sum()),
        previous_samples=0 if previous is None else len(previous),
        image_size=(int(images.shape[1]), int(images.shape[2])),
    )


def _load_window_samples(store_dir: Path, refs: list[str]) -> np.ndarray:
    """serving.store.load_samples, with errors that name the reference and the store."""
    for ref in dict.fromkeys(refs):
        shard = ref.partition("#")[0]
        if SHARD_PATTERN.match(shard) and not (store_dir / shard).is_file():
            raise ImageDataError(f"sample {ref!r}: {store_dir / shard} does not exist")
    try:
        return load_samples(store_dir, refs)
    except PredictionStoreError as error:
        raise ImageDataError(f"{store_dir}: {error}") from error
    except OSError as error:
        raise ImageDataError(f"{store_dir}: cannot read samples ({error})") from error


def _feedback_label(record: dict[str, Any], class_names: tuple[str, ...], path: Path) -> int:
    label = record.get("feedback_label", UNLABELLED)
    if label == UNLABELLED:
        return UNLABELLED
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(class_names):
        raise ImageDataError(
            f"{path}: request {record['request_id']!r} has feedback_label {label!r}; "
            f"expected a class id in [0, {len(class_names) - 1}]"
        )
    return label


def _load_previous(path: Path, class_names: tuple[str, ...], size: tuple[int, ...]) -> ImageSet:
    previous = ImageSet.load(path)
    if previous.class_names != class_names:
        raise ImageDataError(
            f"{path}: previous training set has classes {list(previous.class_names)}, "
            f"the champion has {list(class_names)}"
        )
    if len(previous) and previous.image_size != tuple(size):
        raise ImageDataError(
            f"{path}: previous training images are {previous.image_size[0]}x{previous.image_size[1]}, "
            f"the window's samples are {size[0]}x{size[1]}"
        )
    return previous


def _merge(new: CollectedSet, previous: ImageSet) -> CollectedSet:
    """All new rows first, then all previous rows; nothing is dropped or deduplicated."""
    count = len(previous)
    return CollectedSet(
        images=np.concatenate([new.images, previous.images.reshape(count, *new.images.shape[1:])]),
        labels=np.concatenate([new.labels, previous.labels.astype(np.int64)]),
        is_new=np.concatenate([new.is_new, np.zeros(count, dtype=bool)]),
        request_ids=np.concatenate([new.request_ids, np.full(count, "", dtype=np.str_)]),
        items=np.concatenate([new.items, np.full(count, -1, dtype=np.int64)]),
        class_names=new.class_names,
    )
