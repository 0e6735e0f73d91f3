"""5. Deploy under load: failures and latency while new champion versions are swapped in.

A load generator in a process of its own (bench.loadgen: closed-loop threads on keep-alive
connections) sends one-image requests to the champion's default URL. After a steady phase this
process runs the whole deploy stage (components.deploy.logic.deploy_challenger: lock, repair,
register, wait for workers, smoke test, set default, verify, alias, desired state, prune)
`swaps` times, a second of load apart. A request counts as "during a swap" if it was in flight
at any moment between that deploy's start and end; "steady" requests ended before the first
began. A swap takes 1.5-2 s here, so several give the tail a thousand samples and more.
Latencies come from the generator's clock.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from components.analyze.logic import write_canary
from components.deploy.logic import deploy_challenger
from ctloop import registry
from ctloop_app.stack import REGISTERED_MODEL, LocalStack

STEADY_SECONDS = 3.0  # load before the first deploy: the steady state it is compared with
SETTLE_SECONDS = 1.0  # load after each deploy


def bench_deploy(stack: LocalStack, model_file: Path, train_set: Path, golden_set: Path, bodies: list[bytes],
                 concurrency: int, work: Path, swaps: int = 1) -> dict[str, object]:
    """Deploy `model_file` as the champion's next version `swaps` times while `concurrency`
    clients send traffic."""
    work.mkdir(parents=True, exist_ok=True)
    canary = work / "canary.npz"
    write_canary(model_file, golden_set, canary)
    np.savez(work / "bodies.npz", *[np.frombuffer(body, dtype=np.uint8) for body in bodies])
    generator = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", f"{stack.torchserve.inference_url}/predictions/champion",
         str(stack.torchserve.key_file), str(work / "bodies.npz"), str(concurrency), str(work / "requests.npz")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    windows, outcomes = [], []
    try:
        if generator.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")
        time.sleep(STEADY_SECONDS)
        for _ in range(swaps):
            champion = registry.require_alias(REGISTERED_MODEL, registry.CHAMPION, stack.tracking_uri)
            version = registry.register_model_file(REGISTERED_MODEL, model_file, train_set, tracking_uri=stack.tracking_uri,
                                                   alias=registry.CHALLENGER)
            started = time.monotonic()
            outcomes.append(deploy_challenger(model_file, version, canary, stack.model_store, stack.client,
                                              REGISTERED_MODEL, stack.tracking_uri, replaces=champion))
            windows.append((started, time.monotonic()))
            time.sleep(SETTLE_SECONDS)
    finally:
        generator.stdin.close()
        generator.wait(timeout=120)
    with np.load(work / "requests.npz") as requests:
        rows = {name: requests[name] for name in requests.files}
    in_swap = [(rows["started"] < ended) & (rows["ended"] > started) for started, ended in windows]
    during = np.logical_or.reduce(in_swap)
    figures = {"steady": _latency(rows, rows["ended"] < windows[0][0]), "during_swaps": _latency(rows, during)}
    slowest, p99 = figures["during_swaps"]["max_ms"], figures["steady"]["p99_ms"]
    return {
        "versions": [f"{outcome.old_version} -> {outcome.new_version}" for outcome in outcomes],
        "outcomes": [outcome.status for outcome in outcomes],
        "concurrency": concurrency,
        **figures,
        "swaps": [{"seconds": round(ended - started, 3), **_latency(rows, chosen),
                   "steps": {step["name"]: round(step["seconds"], 3) for step in outcome.steps}}
                  for (started, ended), chosen, outcome in zip(windows, in_swap, outcomes)],
        "slowest_over_steady_p99": round(slowest / p99, 2) if slowest and p99 else None,
        "answered_by_version": {str(key): value for key, value in
                                sorted(Counter(rows["version"][during & rows["ok"]].tolist()).items())},
        "failed_total": int(np.sum(~rows["ok"])),
    }


def _latency(rows: dict[str, np.ndarray], chosen: np.ndarray) -> dict[str, float | int | None]:
    """Requests, failures and p50/p99/max latency (ms) of the chosen requests."""
    milliseconds = (rows["ended"][chosen] - rows["started"][chosen]) * 1000.0
    percentile = (lambda q: round(float(np.percentile(milliseconds, q)), 2)) if len(milliseconds) else (lambda q: None)
    return {"requests": int(np.sum(chosen)), "failed": int(np.sum(~rows["ok"][chosen])),
            "p50_ms": percentile(50), "p99_ms": percentile(99), "max_ms": percentile(100)}
