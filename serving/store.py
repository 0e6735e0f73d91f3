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
import re
from pathlib import Path

import numpy as np

LOG_NAME = "predictions.jsonl"
SHARD_PATTERN = re.compile(r"^samples/[^/#]+\.(\d+)x(\d+)\.f32$")


class PredictionStoreError(ValueError):
    """The store holds something the champion handler would never write."""


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
