"""5. Deploy under load: how many requests fail while a new champion version is swapped in.

Client threads send one-image requests to the champion's default URL as fast as they are
answered (keep-alive connections) while `serving.deploy.deploy` registers a new version, waits
for its workers, smoke-tests it, sets it as the default and verifies it. A request counts as
"during the deploy" if it was in flight at any moment between the deploy's start and end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.load import Connect, Reply, http_connect
from ctloop.modelfile import load_model, predict_proba
from ctloop_app.stack import LocalStack
from serving.archive import build_archive
from serving.deploy import deploy

SETTLE_SECONDS = 0.5  # traffic before and after the deploy, so it runs in steady load


@dataclass(frozen=True)
class Sent:
    started: float
    ended: float
    reply: Reply


def bench_deploy(stack: LocalStack, model_file: Path, canary: np.ndarray, bodies: list[bytes],
                 concurrency: int) -> dict[str, object]:
    """Deploy `model_file` as the champion's next version while `concurrency` threads send traffic."""
    version = str(max(int(known) for known in stack.client.versions("champion")) + 1)
    archive = build_archive(model_file, "champion", version, stack.model_store)
    headers = {"Authorization": f"Bearer {stack.client.keys['inference']}", "Content-Type": "application/x-npy"}
    connect = http_connect(f"{stack.torchserve.inference_url}/predictions/champion", headers)
    stop = threading.Event()
    sent: list[list[Sent]] = [[] for _ in range(concurrency)]
    threads = [threading.Thread(target=_send_until, args=(connect, bodies, stop, sent[index]), daemon=True)
               for index in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(SETTLE_SECONDS)
    started = time.monotonic()
    record = deploy(stack.client, archive, "champion", version, canary, predict_proba(load_model(model_file)[0], canary))
    ended = time.monotonic()
    time.sleep(SETTLE_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    everything = [entry for part in sent for entry in part]
    during = [entry for entry in everything if entry.started < ended and entry.ended > started]
    return {
        "outcome": record.outcome,
        "reason": record.reason,
        "version": f"{record.old_version} -> {version}",
        "deploy_seconds": round(ended - started, 3),
        "steps": {step.name: round(step.seconds, 3) for step in record.steps},
        "concurrency": concurrency,
        "requests_during_deploy": len(during),
        "failed_during_deploy": sum(not entry.reply.ok for entry in during),
        "requests_per_second_during_deploy": round(len(during) / (ended - started), 1),
        "requests_total": len(everything),
        "failed_total": sum(not entry.reply.ok for entry in everything),
        "answered_by_version": dict(Counter(entry.reply.version for entry in during if entry.reply.ok)),
    }


def _send_until(connect: Connect, bodies: list[bytes], stop: threading.Event, sent: list[Sent]) -> None:
    with connect() as send:
        number = 0
        while not stop.is_set():
            started = time.monotonic()
            reply = send(bodies[number % len(bodies)])
            sent.append(Sent(started, time.monotonic(), reply))
            number += 1
