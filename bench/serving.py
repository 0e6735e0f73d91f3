"""1. Serving: the champion on TorchServe (tuned) vs the same TorchScript model in FastAPI/uvicorn
vs an in-process forward (the limit), at each client concurrency.

TorchServe is tried in several configurations (workers, torch threads per worker, server-side
batching); the one with the best geometric mean of requests/s over the client concurrencies
wins and is measured again, side by side with FastAPI and in-process.
TorchServe reads `maxBatchDelay: 0` in a model-config yaml as unset (its default, 100 ms, is
what it reports); that only matters with batches > 1, so the batching candidates set a delay.
The champion handler keeps the prediction log on (every answer appended to the worker's
segment of the prediction store, with its input sample): that is production behaviour, and the FastAPI app does not do it.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, ContextManager, Iterator

import yaml

from bench.fastapi_app import Predictor, UvicornServer
from bench.load import Connect, Reply, Send, http_connect, run_load
from bench.settings import BenchSettings, TorchServeSettings
from bench.timing import ratio, torch_threads
from ctloop_app.stack import LocalStack
from serving.archive import build_archive

MODEL_CONFIG = "model-config.yaml"


def bench_serving(stack: LocalStack, model_file: Path, bodies: list[bytes], settings: BenchSettings,
                  work: Path) -> dict[str, object]:
    """Tune TorchServe, then measure the winner, FastAPI and in-process side by side: per
    concurrency one after the other, so that other work on the machine hits them alike."""
    base = build_archive(model_file, "champion", "1", work / "archives")
    tried = [_tune(stack, base, candidate, bodies, settings) for candidate in settings.candidates]
    winner = TorchServeSettings(**max(tried, key=_balanced_rate)["settings"])
    key = secrets.token_hex(16)
    with _registered(stack, base, winner) as served_url, \
            UvicornServer(model_file, winner.workers, key, work / "uvicorn.log") as fastapi:
        targets = _side_by_side({
            "torchserve": http_connect(served_url, _headers(stack.client.keys["inference"])),
            "fastapi": http_connect(f"{fastapi.url}/predictions/champion", _headers(key)),
            "in_process": _in_process(Predictor(model_file)),
        }, bodies, settings)
    return {
        "request": "one 8x8 image as .npy per request, keep-alive connections",
        "prediction_log": "on for TorchServe (production behaviour), none in FastAPI or in-process",
        "torchserve_tried": tried,
        "winner": asdict(winner),
        "fastapi_workers": winner.workers,
        "targets": targets,
        "ratios": _ratios(targets, settings.concurrencies),
    }


def _balanced_rate(tried: dict[str, Any]) -> float:
    """Geometric mean of a candidate's requests/s over the concurrencies: batching that wins at
    8 clients by making a lone client wait for the batch delay does not win outright."""
    rates = [load["requests_per_second"] for load in tried["load"].values()]
    return math.prod(rates) ** (1 / len(rates))


def _side_by_side(connects: dict[str, Connect], bodies: list[bytes],
                  settings: BenchSettings) -> dict[str, dict[str, object]]:
    """Each target's load per concurrency; the in-process forwards get one torch thread, as the
    TorchServe and uvicorn workers do."""
    targets: dict[str, dict[str, object]] = {name: {} for name in connects}
    for concurrency in settings.concurrencies:
        for name, connect in connects.items():
            with torch_threads(1):
                result = run_load(connect, bodies, concurrency, settings.requests, settings.warmup)
            targets[name][str(concurrency)] = asdict(result)
    return targets


def _in_process(predictor: Predictor) -> Connect:
    """The FastAPI app's own work (decode, check, forward, JSON) called directly, no HTTP."""

    def connect() -> ContextManager[Send]:
        return contextlib.nullcontext(lambda body: Reply(bool(predictor.answer(body))))

    return connect


def tuned_archive(base: Path, candidate: TorchServeSettings, out_dir: Path) -> Path:
    """A copy of `base` named after the candidate, whose model-config yaml sets its workers,
    torch threads and batching (serving.archive fixes those; the handler reads them from here)."""
    target = out_dir / f"{candidate.name}.mar"
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == MODEL_CONFIG:
                config = yaml.safe_load(data) | {
                    "minWorkers": candidate.workers, "maxWorkers": candidate.workers,
                    "torch_threads": candidate.torch_threads, "batchSize": candidate.batch_size,
                    "maxBatchDelay": candidate.max_batch_delay_ms,
                }
                data = yaml.safe_dump(config, sort_keys=False).encode()
            copy.writestr(entry, data)
    return target


def _tune(stack: LocalStack, base: Path, candidate: TorchServeSettings, bodies: list[bytes],
          settings: BenchSettings) -> dict[str, object]:
    """One candidate at every concurrency, and the settings TorchServe says it applied."""
    with _registered(stack, base, candidate) as url:
        applied = _applied_settings(stack, candidate)
        connect = http_connect(url, _headers(stack.client.keys["inference"]))
        load = {str(concurrency): asdict(run_load(connect, bodies, concurrency, settings.requests, settings.warmup))
                for concurrency in settings.concurrencies}
    return {"settings": asdict(candidate), "applied": applied, "load": load}


@contextlib.contextmanager
def _registered(stack: LocalStack, base: Path, candidate: TorchServeSettings) -> Iterator[str]:
    """The candidate registered as its own model (named after it); yields its prediction URL."""
    archive = tuned_archive(base, candidate, stack.model_store)
    stack.client.register(archive.name, candidate.name, initial_workers=candidate.workers)
    try:
        yield f"{stack.torchserve.inference_url}/predictions/{candidate.name}"
    finally:
        stack.client.unregister(candidate.name, "1")
        archive.unlink()


def _applied_settings(stack: LocalStack, candidate: TorchServeSettings) -> dict[str, object]:
    """What TorchServe says it runs, so a setting it ignored shows up in the results."""
    description = stack.client.describe(candidate.name)[0]
    return {
        "workers": len(description["workers"]),
        "batch_size": description["batchSize"],
        "max_batch_delay_ms": description["maxBatchDelay"],
    }


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/x-npy"}


def _ratios(targets: dict[str, dict[str, dict[str, object]]], concurrencies: tuple[int, ...]) -> dict[str, object]:
    """TorchServe's requests/s and p50 over the other targets', per concurrency."""
    ratios: dict[str, object] = {}
    for concurrency in map(str, concurrencies):
        served = targets["torchserve"][concurrency]
        for other in ("fastapi", "in_process"):
            theirs = targets[other][concurrency]
            ratios[f"torchserve_over_{other}_rps_c{concurrency}"] = ratio(served["requests_per_second"],
                                                                          theirs["requests_per_second"])
            ratios[f"torchserve_over_{other}_p50_c{concurrency}"] = ratio(served["p50_ms"], theirs["p50_ms"])
    return ratios
