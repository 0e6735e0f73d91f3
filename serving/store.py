"""Read the champion's prediction store (written by serving/handlers/ctloop_handler_base.py).

Layout under the store directory (CTLOOP_STORE_DIR of the TorchServe workers):
- `predictions.jsonl`: one JSON object per answered image: request_id, time (unix seconds),
  model_name, model_version, item (position in the request), label, class_name, confidence,
  sample (a reference like `samples/<shard>.8x8.f32#12`).
- `samples/<shard>.<H>x<W>.f32`: raw float32 records of H*W values, one file per worker; record
  i is the preprocessed input (grey, [0, 1]) of the prediction that references `#i`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.wire import LOG_NAME, SHARD_PATTERN, record_problem

__all__ = ["LOG_NAME", "SHARD_PATTERN", "PredictionLogError", "PredictionRecords", "PredictionStoreError",
           "load_samples", "read_jsonl", "read_prediction_log", "read_predictions"]


class PredictionStoreError(ValueError):
    """The store holds something the champion handler would never write."""


class PredictionLogError(PredictionStoreError):
    """A prediction or feedback log is missing or holds a record the handler would never write."""


class PredictionRecords(list):
    """The complete records of a log (a list of dicts), plus what was skipped: `truncated_tail`,
    whether its last line was cut short (a writer interrupted mid-line, or the file copied while
    being written), and `broken_lines`, the numbers of earlier lines that are not JSON (such a
    fragment, closed by the next writer so that its records stay whole)."""

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
            raise PredictionStoreError(f"bad sample reference {ref!r}; expected samples/<shard>.<H>x<W>.f32#<index>")
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
