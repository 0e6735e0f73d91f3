"""A prediction store written in the layout of serving/store.py, for the stage tests (the
`prediction_store` fixture of tests/unit, and the integration tests of the stages' entry points)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctloop import wire

SIZE = (8, 8)
CLASSES = ("0", "1", "2")


class StoreWriter:
    """Writes `predictions.jsonl` and one `samples/<shard>.<H>x<W>.f32` per model version, the way
    the champion handler's PredictionLog does."""

    def __init__(self, root: Path, size: tuple[int, int] = SIZE) -> None:
        self.root, self.size = root, size
        (root / "samples").mkdir(parents=True, exist_ok=True)
        self.log_path = root / "predictions.jsonl"
        self.log_path.touch()
        self.counts: dict[str, int] = {}
        self.rng = np.random.default_rng(0)

    def log(self, confidence: float, *, label: int = 0, version: str = "1", request_id: str | None = None,
            server_id: str | None = None, item: int = 0, image: np.ndarray | None = None, atc_threshold: float | None = None) -> dict:
        """One prediction with its stored sample; returns the record written."""
        shard = f"samples/champion-v{version}-1.{self.size[0]}x{self.size[1]}.f32"
        if image is None:
            image = self.rng.random(self.size, dtype=np.float32)
        with open(self.root / shard, "ab") as handle:
            handle.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        index = self.counts.get(shard, 0)
        self.counts[shard] = index + 1
        total = sum(self.counts.values())
        class_name = CLASSES[label] if 0 <= label < len(CLASSES) else str(label)
        record = wire.prediction_record(request_id or f"req-{total}", server_id or f"server-{total}", 1_700_000_000.0 + total,
                                        "champion", version, item, label, class_name, confidence, f"{shard}#{index}", atc_threshold)
        self.raw(json.dumps(record) + "\n")
        return record

    def log_many(self, confidences: list[float], **kwargs) -> list[dict]:
        return [self.log(confidence, **kwargs) for confidence in confidences]

    def raw(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def image(self, record: dict) -> np.ndarray:
        shard, _, index = record["sample"].partition("#")
        data = np.fromfile(self.root / shard, dtype=np.float32).reshape(-1, *self.size)
        return data[int(index)]
