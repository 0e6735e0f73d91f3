"""Read the champion's prediction store (written by serving/handlers/prediction_log.py).

Layout under the store directory (CTLOOP_STORE_DIR of the TorchServe workers), in segments that
each worker process writes alone (ctloop.wire):
- `segments/<stem>.jsonl`: one JSON object per answered image: request_id, server_id
  (TorchServe's id for the request), time (unix seconds), model_name, model_version, item
  (position in the request), label, class_name, confidence, sample (a reference like
  `segments/<stem>.8x8.f32#12`); and marker lines `{"lost": n, ...}` for records the writer
  could not store (a full disk).
- `segments/<stem>.<H>x<W>.f32`: raw float32 records of H*W values; record i is the preprocessed
  input (grey, [0, 1]) of the prediction that references `#i`.
`<stem>` is `<start ns>_<model>_v<version>_<writer>`. Readers take whole segments, newest (or
oldest) first, and stop once they hold the records asked for, so memory follows the window, not
the history.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.wire import LOST_FIELD, SEGMENT_PATTERN, SEGMENTS_DIR, SHARD_PATTERN, record_problem

__all__ = ["SHARD_PATTERN", "PredictionLogError", "PredictionRecords", "PredictionStoreError", "Segment",
           "StoreRecords", "list_segments", "load_samples", "newest_version", "read_jsonl", "read_newest",
           "read_oldest", "read_prediction_log", "read_predictions", "read_store"]


class PredictionStoreError(ValueError):
    """The store holds something the champion handler would never write."""


class PredictionLogError(PredictionStoreError):
    """A prediction or feedback log is missing or holds a record the handler would never write."""


class PredictionRecords(list):
    """The complete records of a log (a list of dicts), plus what was skipped: `truncated_tail`,
    whether its last line was cut short (a writer interrupted mid-line, or the file copied while
    being written), and `broken_lines`, the numbers of earlier lines that are not JSON (skipped, so
    that the records after them still count)."""

    def __init__(self, records: list[dict], truncated_tail: bool, broken_lines: list[int]) -> None:
        super().__init__(records)
        self.truncated_tail = truncated_tail
        self.broken_lines = broken_lines


def read_prediction_log(path: str | Path) -> PredictionRecords:
    """Parse a prediction log, skipping (and reporting) interrupted records rather than stopping
    the loop on them: one lost prediction must not blind the monitor to all later ones."""
    lines = Path(path).read_bytes().split(b"\n")
    tail = lines.pop()
    records, broken = [], []
    for number, line in enumerate(lines, start=1):
        parsed = _parse(line)
        if parsed is None:
            broken.append(number)
        else:
            records.append(parsed)
    last = _parse(tail) if tail else None
    if last is not None:
        records.append(last)
    return PredictionRecords(records, truncated_tail=bool(tail) and last is None, broken_lines=broken)


def _parse(line: bytes) -> object | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def read_predictions(path: Path) -> tuple[list[dict[str, Any]], bool, list[int]]:
    """The log's complete records, checked field by field; whether a truncated last line was
    skipped; and the numbers of earlier lines skipped as interrupted records. Errors name the
    file and the line."""
    records, truncated, broken = read_jsonl(path, "prediction log")
    for number, record in enumerate(records, start=1):
        _check_record(record, path, number)
    return records, truncated, broken


@dataclass(frozen=True)
class Segment:
    """One segment of the store: its record file, when it started, which version wrote it, and
    when it was last written (its newest record is no newer)."""

    log: Path
    start_ns: int
    model_version: str
    modified: float
    size: int


@dataclass
class StoreRecords:
    """Records read from segments, by time, and what was skipped: segments whose last line was
    cut short (a writer died mid-line), earlier lines that are not JSON (`<file>:<line>`), and the
    records writers counted as lost (not stored, e.g. on a full disk)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    lost: int = 0

    def add(self, segment: Segment) -> None:
        lines = read_prediction_log(segment.log)
        if lines.truncated_tail:
            self.cut_short.append(segment.log.name)
        self.broken += [f"{segment.log.name}:{number}" for number in lines.broken_lines]
        for number, line in enumerate(lines, start=1):
            if isinstance(line, dict) and LOST_FIELD in line and "sample" not in line:
                self.lost += _lost_count(line, segment.log, number)
            else:
                _check_record(line, segment.log, number)
                self.records.append(line)
        self.records.sort(key=lambda record: record["time"])


def list_segments(store_dir: str | Path) -> list[Segment]:
    """The store's segments, oldest start first; none for a store nothing was written to yet."""
    try:
        entries = list(os.scandir(Path(store_dir) / SEGMENTS_DIR))
    except FileNotFoundError:
        return []
    segments = []
    for entry in entries:
        match = SEGMENT_PATTERN.match(entry.name.removesuffix(".jsonl"))
        if not entry.name.endswith(".jsonl") or match is None:
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:  # pruned meanwhile
            continue
        segments.append(Segment(Path(entry.path), int(match.group(1)), match.group(3), stat.st_mtime, stat.st_size))
    return sorted(segments, key=lambda segment: (segment.start_ns, segment.log.name))


def newest_version(store_dir: str | Path) -> str | None:
    """The model version of the most recently written segment (the serving champion's); a segment
    still empty (opened, not yet written) does not count."""
    segments = [segment for segment in list_segments(store_dir) if segment.size]
    return max(segments, key=lambda segment: segment.modified).model_version if segments else None


def read_store(store_dir: str | Path) -> StoreRecords:
    """Every record of the store; for tests and small stores (the monitor reads a tail)."""
    found = StoreRecords()
    for segment in list_segments(store_dir):
        found.add(segment)
    return found


def read_newest(store_dir: str | Path, count: int, version: str | None = None) -> StoreRecords:
    """The newest `count` records (of `version`, if given), reading segments newest first and
    stopping at the first segment last written before the oldest record kept."""
    found = StoreRecords()
    segments = [segment for segment in list_segments(store_dir) if version in (None, segment.model_version)]
    for segment in sorted(segments, key=lambda segment: segment.modified, reverse=True):
        if len(found.records) >= count and segment.modified < found.records[0]["time"]:
            break
        found.add(segment)
        found.records = found.records[-count:] if count else []
    return found


def read_oldest(store_dir: str | Path, count: int, version: str) -> StoreRecords:
    """The first `count` records of `version` (its baseline), reading its segments oldest first
    and stopping at the first segment started after the newest record kept."""
    found = StoreRecords()
    for segment in list_segments(store_dir):
        if segment.model_version != version:
            continue
        if len(found.records) >= count and segment.start_ns / 1e9 > found.records[-1]["time"]:
            break
        found.add(segment)
        found.records = found.records[:count]
    return found


def _lost_count(line: dict, path: Path, number: int) -> int:
    lost = line[LOST_FIELD]
    if isinstance(lost, bool) or not isinstance(lost, int) or lost < 0:
        raise PredictionLogError(f"{path}:{number}: {LOST_FIELD!r} must be an int >= 0, got {lost!r}")
    return lost


def read_jsonl(path: Path, what: str) -> tuple[list[Any], bool, list[int]]:
    """The JSON values of a log's complete lines (see read_prediction_log); `what` names the log
    in errors."""
    path = Path(path)
    if not path.is_file():
        raise PredictionLogError(f"{what} {path} does not exist")
    try:
        records = read_prediction_log(path)
    except OSError as error:
        raise PredictionLogError(f"{what} {path}: cannot read ({error.strerror})") from error
    return list(records), records.truncated_tail, records.broken_lines


def _check_record(record: Any, path: Path, number: int) -> None:
    problem = record_problem(record)
    if problem is not None:
        raise PredictionLogError(f"{path}:{number}: {problem}")
    item = record.get("item", 0)
    if isinstance(item, bool) or not isinstance(item, int) or item < 0:
        raise PredictionLogError(f"{path}:{number}: 'item' must be an int >= 0, got {item!r}")
    if not 0.0 <= record["confidence"] <= 1.0 or not math.isfinite(record["confidence"]):
        raise PredictionLogError(f"{path}:{number}: 'confidence' must be in [0, 1], got {record['confidence']!r}")


def load_samples(store_dir: str | Path, refs: list[str]) -> np.ndarray:
    """The stored inputs for sample references, as float32 (len(refs), H, W), in order."""
    store_dir = Path(store_dir)
    shards: dict[str, np.ndarray] = {}
    images = []
    for ref in refs:
        shard, _, index = ref.partition("#")
        match = SHARD_PATTERN.match(shard)
        if match is None or not index.isdigit():
            raise PredictionStoreError(f"bad sample reference {ref!r}; expected segments/<stem>.<H>x<W>.f32#<index>")
        if shard not in shards:
            shards[shard] = _read_shard(store_dir / shard, int(match.group(1)), int(match.group(2)))
        if int(index) >= len(shards[shard]):
            raise PredictionStoreError(f"sample {ref!r} is beyond the end of {store_dir / shard}")
        images.append(shards[shard][int(index)])
    if not images:
        return np.zeros((0, 0, 0), dtype=np.float32)
    if len({image.shape for image in images}) > 1:
        raise PredictionStoreError("samples of different sizes cannot form one batch")
    return np.stack(images)


def _read_shard(path: Path, height: int, width: int) -> np.ndarray:
    """All complete records of a shard; a record still being written is not yet referenced."""
    data = np.fromfile(path, dtype=np.float32)
    complete = len(data) // (height * width)
    return data[: complete * height * width].reshape(complete, height, width)
