"""Production traffic through the champion: one request per part, some parts audited.

The demo and `ctloop run` use this to play a production line against TorchServe. Every part
gets its own request id (`part-<batch>-<position>`, the batch a random token per Traffic), so a
quality audit can report the true label of some parts afterwards as ground-truth feedback
(`<store>/feedback.jsonl`), the way an inspection station would. Feedback is matched to
predictions by request id, so ids must not repeat in a store, not even across the Traffics that
send one window after another to it (the bench's loop over time, a test's second window).
"""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctloop.images import ImageSet
from ctloop.wire import FEEDBACK_NAME
from serving.client import TorchServeClient



@dataclass(frozen=True)
class Answer:
    position: int
    true_label: int
    label: int
    confidence: float
    model_version: str


class Traffic:
    """Sends parts to the champion from `concurrency` threads, each with its own HTTP session."""

    def __init__(self, client: TorchServeClient, store_dir: Path, audit_share: float, seed: int,
                 concurrency: int = 4) -> None:
        self.client = client
        self.feedback = Path(store_dir) / FEEDBACK_NAME
        self.audit_share = audit_share
        self.rng = np.random.default_rng(seed)
        self.concurrency = concurrency
        self.position = 0
        self.batch = secrets.token_hex(4)
        self.local = threading.local()

    def request_id(self, position: int) -> str:
        """The request id of the part at `position` (its feedback names the same id)."""
        return f"part-{self.batch}-{position}"

    def send(self, parts: ImageSet) -> list[Answer]:
        """Predict every part (in order of position); audit a share of them."""
        positions = range(self.position, self.position + len(parts))
        self.position += len(parts)
        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(self._predict, positions, parts.images, parts.labels))
        audited = [answer for answer in answers if self.rng.random() < self.audit_share]
        self._write_feedback(audited)
        return answers

    def _predict(self, position: int, image: np.ndarray, true_label: np.int64) -> Answer:
        if not hasattr(self.local, "client"):
            self.local.client = TorchServeClient(self.client.inference_url, self.client.management_url,
                                                 self.client.keys)
        prediction = self.local.client.predict("champion", image, request_id=self.request_id(position))
        return Answer(position, int(true_label), prediction.labels[0], prediction.confidences[0],
                      prediction.model_version or "")

    def _write_feedback(self, audited: list[Answer]) -> None:
        if not audited:
            return
        lines = "".join(json.dumps({"request_id": self.request_id(answer.position), "item": 0,
                                    "label": answer.true_label}) + "\n" for answer in audited)
        with open(self.feedback, "a", encoding="utf-8") as handle:
            handle.write(lines)
