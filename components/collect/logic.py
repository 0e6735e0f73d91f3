"""collect: the monitored window's stored samples, optionally merged with the previous training set.

The result is a CollectedSet: new rows (from the window, unlabelled unless ground-truth feedback
gave their label) and previous rows (labelled). Every new sample survives the merge, even one
whose pixels equal a previous sample's: it is a new observation of production, and the
consensus filter must see it.

The previous rows are capped per class (`previous_per_class`), so that the training set, and with
it training time, stays bounded however many cycles add their windows. Each training set lists
its rows newest first (consensus puts the window's pseudo-labelled rows before the previous
ones), so a capped class keeps its newest half-cap rows and a seeded random sample of the older
ones for the rest: recent production, plus a stratified reservoir of the history.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.collected import UNLABELLED, CollectedSet
from ctloop.images import ImageDataError, ImageSet
from ctloop.wire import SHARD_PATTERN
from serving.store import PredictionStoreError, load_samples, read_predictions

__all__ = ["CollectResult", "CollectSummary", "cap_per_class", "collect_from_registry", "collect_window"]


@dataclass(frozen=True)
class CollectSummary:
    """What collect wrote.

    Attributes:
        out: the CollectedSet file.
        new_samples: samples from the monitored window.
        labelled_new: new samples with a ground-truth label from feedback.
        previous_samples: samples merged in from the previous training set.
        image_size: (H, W) of every sample.
        previous_dropped: previous samples left out by the per-class cap.
    """

    out: Path
    new_samples: int
    labelled_new: int
    previous_samples: int
    image_size: tuple[int, int]
    previous_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "new_samples": self.new_samples,
            "labelled_new": self.labelled_new,
            "previous_samples": self.previous_samples,
            "total_samples": self.new_samples + self.previous_samples,
            "previous_dropped": self.previous_dropped,
            "image_size": list(self.image_size),
        }


@dataclass(frozen=True)
class CollectResult:
    """What the collect stage hands on: the summary, and the champion's image size and number of
    classes, which validate checks the collected set against.

    Attributes:
        summary: what collect_window wrote.
        champion_version: the registry version the `champion` alias named.
        image_size: (H, W) of the champion's training images.
        num_classes: the champion's number of classes.
    """

    summary: CollectSummary
    champion_version: str
    image_size: tuple[int, int]
    num_classes: int

    def outputs(self) -> dict[str, int]:
        """The stage's outputs by name, as the pipeline wires them."""
        return {
            "new_samples": self.summary.new_samples,
            "total_samples": self.summary.new_samples + self.summary.previous_samples,
            "image_height": self.image_size[0],
            "image_width": self.image_size[1],
            "num_classes": self.num_classes,
        }


def collect_from_registry(
    window_records: Path,
    store_dir: Path,
    out: Path,
    merge_previous: bool,
    tracking_uri: str | None,
    registered_model: str,
    previous_per_class: int = 0,
) -> CollectResult:
    """The collect stage: collect_window against the model version MLflow's `champion` alias names.

    The champion's training set is downloaded even when it is not merged: the champion defines
    the task, so its class names are the ones feedback labels index into, and its image size and
    class count are what validate checks the collected set against. ctloop registers every
    version with its training set, so a champion without one is an error, not a case to guess.

    Args:
        window_records: the monitor's window JSONL.
        store_dir: the prediction store the records' samples are in.
        out: where to write the CollectedSet (.npz).
        merge_previous: also merge the champion's training set into the collected set.
        tracking_uri: MLflow tracking URI ("" or None: MLFLOW_TRACKING_URI).
        registered_model: the MLflow registered model whose `champion` alias names the champion.
        previous_per_class: the most previous rows kept per class (0: all).

    Raises:
        RegistryError: MLflow is unreachable or has no `champion` alias for the model.
        ValueError: the champion version was registered without its training set.
        ImageDataError: as collect_window.
    """
    # MLflow takes seconds to import; only this entry point needs it, not the window logic.
    from ctloop import registry

    with tempfile.TemporaryDirectory(prefix="ctloop-collect-") as scratch:
        version = registry.require_alias(registered_model, registry.CHAMPION, tracking_uri)
        files = registry.download_version(registered_model, version, scratch, tracking_uri)
        if files.train_set is None:
            raise ValueError(
                f"champion version {version} of {registered_model!r} has no training set; "
                f"register versions with ctloop.registry.register_model_file(..., train_set=...)"
            )
        champion_set = ImageSet.load(files.train_set)
        summary = collect_window(Path(window_records), Path(store_dir), Path(out),
                                 files.train_set if merge_previous else None, champion_set.class_names,
                                 previous_per_class)
    print(summary.to_dict())
    return CollectResult(summary, version, champion_set.image_size, len(champion_set.class_names))


def collect_window(
    window_records: Path,
    store_dir: Path,
    out: Path,
    previous_train: Path | None,
    class_names: Sequence[str],
    previous_per_class: int = 0,
) -> CollectSummary:
    """Fetch the window's samples from the store, merge the previous training set, save the result.

    Args:
        window_records: the monitor's window JSONL (prediction records, with `feedback_label`
            where ground truth is known).
        store_dir: the prediction store the records' `sample` references point into.
        out: where to write the CollectedSet (.npz).
        previous_train: the previous training set (ImageSet .npz) to merge; None: new samples only.
        class_names: the champion's class names, indexed by label id.
        previous_per_class: the most previous rows kept per class (0: all); see the module's docstring.

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
        server_ids=np.array([record["server_id"] for record in records], dtype=np.str_),
        items=np.array([record.get("item", 0) for record in records], dtype=np.int64),
        class_names=class_names,
    )
    previous = _load_previous(Path(previous_train), class_names, images.shape[1:]) if previous_train else None
    dropped = 0
    if previous is not None and previous_per_class:
        kept = cap_per_class(previous.labels, previous_per_class)
        dropped, previous = len(previous) - len(kept), previous.subset(kept)
    merged = new if previous is None else _merge(new, previous)
    merged.save(out)
    return CollectSummary(
        out=Path(out),
        new_samples=len(new),
        labelled_new=int((labels != UNLABELLED).sum()),
        previous_samples=0 if previous is None else len(previous),
        image_size=(int(images.shape[1]), int(images.shape[2])),
        previous_dropped=dropped,
    )


def cap_per_class(labels: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Indices (ascending) of the rows kept when each class keeps at most `cap`: its first
    (newest) `cap // 2` rows, and a seeded uniform sample of its older rows for the rest."""
    kept = []
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) <= cap:
            kept.append(rows)
            continue
        newest = cap // 2
        kept += [rows[:newest], rng.choice(rows[newest:], cap - newest, replace=False)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


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
        server_ids=np.concatenate([new.server_ids, np.full(count, "", dtype=np.str_)]),
        items=np.concatenate([new.items, np.full(count, -1, dtype=np.int64)]),
        class_names=new.class_names,
    )
