"""A prediction store written in the layout of serving/store.py, for the stage tests (the
`prediction_store` fixture of tests/unit, and the integration tests of the stages' entry points)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ctloop import wire

SIZE = (8, 8)
CLASSES = ("0", "1", "2")


class StoreWriter:
    """Writes one segment (`segments/<stem>.jsonl` and its `.<H>x<W>.f32` samples) per model
    version, the way the champion handler's PredictionLog does, at fake times 1.7e9 + n seconds;
    each segment's mtime is set to its last record's time, as a live writer's would be."""

    def __init__(self, root: Path, size: tuple[int, int] = SIZE) -> None:
        self.root, self.size = root, size
        (root / wire.SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        self.log_path = self.segment_log("1")
        self.log_path.touch()
        self.counts: dict[str, int] = {}
        self.rng = np.random.default_rng(0)

    def stem(self, version: str) -> str:
        return wire.segment_stem(1_700_000_000 * 10**9 + int(version), "champion", version, "test-1")

    def segment_log(self, version: str) -> Path:
        return self.root / wire.segment_log(self.stem(version))

    def log(self, confidence: float, *, label: int = 0, version: str = "1", request_id: str | None = None,
            server_id: str | None = None, item: int = 0, image: np.ndarray | None = None,
            atc_threshold: float | None = None, slice_name: str = "") -> dict:
        """One prediction with its stored sample; returns the record written."""
        shard = wire.segment_samples(self.stem(version), self.size)
        if image is None:
            image = self.rng.random(self.size, dtype=np.float32)
        with open(self.root / shard, "ab") as handle:
            handle.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        index = self.counts.get(shard, 0)
        self.counts[shard] = index + 1
        total = sum(self.counts.values())
        class_name = CLASSES[label] if 0 <= label < len(CLASSES) else str(label)
        record = wire.prediction_record(request_id or f"req-{total}", server_id or f"server-{total}",
                                        1_700_000_000.0 + total, "champion", version, item, label, class_name,
                                        confidence, f"{shard}#{index}", atc_threshold, slice_name)
        self.raw(json.dumps(record) + "\n", version)
        return record

    def log_many(self, confidences: list[float], **kwargs) -> list[dict]:
        return [self.log(confidence, **kwargs) for confidence in confidences]

    def raw(self, text: str, version: str = "1") -> None:
        """Append text to a version's segment, its mtime the newest record's time."""
        path = self.segment_log(version)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
        moment = 1_700_000_000.0 + sum(self.counts.values())
        os.utime(path, (moment, moment))

    def image(self, record: dict) -> np.ndarray:
        shard, _, index = record["sample"].partition("#")
        data = np.fromfile(self.root / shard, dtype=np.float32).reshape(-1, *self.size)
        return data[int(index)]
