"""3. The CT cycle: seconds from the monitor tripping to the new champion answering as the default,
per stage, and how much of it is orchestration overhead rather than work.

Drifted parts go through the champion until the monitor has a full window, then one pipeline
run (kfp.local) retrains and deploys. A watcher thread asks the champion's default URL for an
answer every `POLL_SECONDS` and notes when a new version first answers; the monitor "trips" when
its task writes its output. Overhead per stage is estimated from separate measurements:
- start-up: the wall time of a no-op kfp.local task (a fork of the warm forkserver, the kfp
  executor, reading its input and writing its output);
- artifact I/O: reading and re-writing the stage's output artifacts (ImageSets decoded and
  encoded as the stages do).
The rest of a stage's wall time is its work (training, HTTP calls to TorchServe and MLflow).
The forkserver's warm-up, importing every stage's modules once, is paid by the first task of
each process that runs pipelines (each cycle of `ctloop serve`, which starts `ctloop cycle`);
the no-op tasks run first and pay it here, so the cycle is timed warm and the warm-up is
reported on its own: the same imports timed in a fresh Python process, less bare Python's
start-up. Start-up and warm-up are measured once per bench run, so the parts line's cycle reuses
them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.noop_component import build_noop_pipeline
from bench.settings import BenchSettings
from ctloop_app.bootstrap import BootstrapResult
from ctloop.images import ImageDataError, ImageSet, write_atomic
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.stack import LocalStack
from ctloop_app.traffic import Traffic
from ctloop_app.local_run import LocalRun, run_cycle, run_locally
from ctloop_app.warm_tasks import stage_modules
from kubeflow_pipeline.pipeline import STAGE_OF
from serving.client import TorchServeClient, TorchServeError

POLL_SECONDS = 0.05
AUDIT_SHARE = 0.25  # as in `make run`: a quarter of the parts get ground-truth feedback
NOOP_TASKS = 3
REPO_ROOT = Path(__file__).resolve().parent.parent
TASK_FUNCTION = {function.__name__.replace("_", "-"): function for function in STAGE_OF}


class DefaultWatcher:
    """Polls the champion's default URL from its own thread; `changed_at` is the wall-clock time
    (time.time) of the first answer from a version other than `old_version`."""

    def __init__(self, client: TorchServeClient, probe: np.ndarray, old_version: str) -> None:
        self.client = TorchServeClient(client.inference_url, client.management_url, client.keys)
        self.probe, self.old_version = probe, old_version
        self.changed_at: float | None = None
        self.new_version: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set() and self.changed_at is None:
            with contextlib.suppress(TorchServeError):
                version = self.client.predict("champion", self.probe, canary=True).model_version
                if version is not None and version != self.old_version:
                    self.changed_at, self.new_version = time.time(), version
            self._stop.wait(POLL_SECONDS)

    def __enter__(self) -> "DefaultWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def bench_cycle(stack: LocalStack, boot: BootstrapResult, settings: BenchSettings, work: Path) -> dict[str, object]:
    """Trip the monitor with drifted parts, run one cycle, and break its time down."""
    config = settings.config
    pool = ImageSet.load(boot.production_pool)
    line = ProductionLine(pool, settings.seed, DriftSpec(settings.cycle_drift, settings.severity, start=0))
    Traffic(stack.client, stack.store_dir, AUDIT_SHARE, settings.seed).send(line.take(config.recent_window))
    old_version = stack.client.default_version("champion")
    noop_seconds = _noop_task_seconds()
    with DefaultWatcher(stack.client, pool.images[:1], old_version) as watcher, quiet(work / "cycle.log"):
        run = run_cycle(stack, config, boot.golden_set, work / "pipeline_root")
    tripped_at = _finished_at(run, "monitor-op")
    stages = _stage_breakdown(run, noop_seconds)
    window = _trip_to_default_tasks(run)
    return {
        "succeeded": run.succeeded,
        "error": run.error,
        "drift": f"{settings.cycle_drift} at severity {settings.severity}",
        "image_size": list(pool.image_size),
        "train_epochs": config.train_epochs,
        "old_version": old_version,
        "new_version": watcher.new_version,
        "trip_to_default_seconds": _seconds_between(tripped_at, watcher.changed_at),
        "cycle_seconds": round(run.seconds, 3),
        "between_tasks_seconds": round(run.seconds - sum(task.seconds for task in run.tasks.values()), 3),
        "warm_up_seconds": round(_warm_up_seconds(), 3),
        "stages": stages,
        "trip_to_default_tasks": window,
        "trip_to_default_overhead_seconds": round(sum(stages[name]["overhead"] for name in window), 3),
        "trip_to_default_work_seconds": round(sum(stages[name]["work"] for name in window), 3),
    }


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[None]:
    """kfp.local prints every task's streamed output; keep it in a log file, not in the table."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield


def _finished_at(run: LocalRun, task: str) -> float | None:
    """Wall-clock time the task wrote its executor output, i.e. when its result existed."""
    if run.run_dir is None:
        return None
    output = run.run_dir / task / "executor_output.json"
    return output.stat().st_mtime if output.is_file() else None


def _seconds_between(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def _trip_to_default_tasks(run: LocalRun) -> list[str]:
    """The tasks that ran after the monitor up to and including the deploy (kfp.local runs
    tasks one at a time, in this order)."""
    names = list(run.tasks)
    if "monitor-op" not in names or "deploy-op" not in names:
        return []
    return names[names.index("monitor-op") + 1 : names.index("deploy-op") + 1]


def _stage_breakdown(run: LocalRun, noop_seconds: float) -> dict[str, dict[str, float]]:
    """Per task: wall, start-up, artifact I/O, overhead (their sum) and work (the rest). The
    importer runs inside the orchestrator, so it has no start-up."""
    breakdown = {}
    for name, task in run.tasks.items():
        startup = noop_seconds if name in TASK_FUNCTION else 0.0
        artifact_io = _artifact_io_seconds(task.artifacts)
        overhead = min(task.seconds, startup + artifact_io)
        breakdown[name] = {
            "wall": round(task.seconds, 3),
            "startup": round(startup, 3),
            "artifact_io": round(artifact_io, 3),
            "overhead": round(overhead, 3),
            "work": round(task.seconds - overhead, 3),
        }
    return breakdown


def _artifact_io_seconds(artifacts: dict[str, dict[str, object]]) -> float:
    """Time to read each output artifact file and write it again (ImageSets decoded and encoded)."""
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-io-") as scratch:
        for index, artifact in enumerate(artifacts.values()):
            path = Path(str(artifact["uri"]))
            if path.is_file():
                started = time.perf_counter()
                _read_and_write(path, Path(scratch) / str(index))
                total += time.perf_counter() - started
    return total


def _read_and_write(path: Path, copy: Path) -> None:
    try:
        ImageSet.load(path).save(copy)
    except ImageDataError:
        write_atomic(copy, path.read_bytes())


@functools.cache
def _noop_task_seconds() -> float:
    """Median wall time of a no-op kfp.local task: the per-stage cost of being a task (the median
    leaves out the first task's wait for the forkserver's warm-up). Measured once per bench run;
    the parts line's cycle uses the digits cycle's figure."""
    with tempfile.TemporaryDirectory() as folder, quiet(Path(folder) / "noop.log"):
        run = run_locally(build_noop_pipeline(NOOP_TASKS), {}, Path(folder) / "noop_root")
    return statistics.median(task.seconds for task in run.tasks.values())


@functools.cache
def _warm_up_seconds() -> float:
    """The forkserver's warm-up: its imports (ctloop_app.warm_tasks.stage_modules) timed in a
    fresh Python process with the flag kfp's executor sets, less bare Python's start-up."""
    return max(0.0, _python_seconds("import " + ", ".join(stage_modules())) - _python_seconds("pass"))


def _python_seconds(code: str) -> float:
    """Wall time of `python -c code`."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True,
                   env={**os.environ, "_KFP_RUNTIME": "true"})
    return time.perf_counter() - started
