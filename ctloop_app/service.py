"""`ctloop serve`: the continuous loop on one machine, as a long-running service.

It serves the champion (TorchServe, MLflow, on fixed ports) and runs the same pipeline the
cluster's recurring run uses, through kfp.local, on the config's `schedule` and, optionally,
every `run_every_predictions` new predictions. Everything lives in the work directory, so a
restart (Ctrl-C, kill -9, a reboot) resumes serving MLflow's `champion` with its history:

    mlflow/                    the registry (SQLite) and its artifacts
    torchserve/model_store/    the archives and serving-state.json, what a restarted TorchServe serves
    store/                     the prediction log and samples
    seed/                      the bootstrap's train.npz and golden.npz; `seeded` marks a finished seed
    service/                   config.yaml (what runs use), state.json (last and next run),
                               processes.json (to stop what a killed service left), runs/*.log
    pipeline_root/             the newest kfp.local runs

A scheduled run is skipped when no prediction was logged since the last one (an idle line: the
monitor would judge the same window again). `--models` seeds an empty work directory only; a
live one is never overwritten. Each run is a
`ctloop cycle` process in its own process group: SIGTERM to the service abandons a run in
progress (its group is stopped) and the servers stop; the next start, and every run's first
step, reconciles serving with the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import psutil
import yaml

from ctloop.config import PipelineConfig
from ctloop.images import write_atomic
from ctloop_app import operate
from ctloop_app.install import InstallError, bootstrap_files
from ctloop_app.schedule import Schedule, parse_schedule
from ctloop_app.ports import StackPorts
from ctloop_app.stack import LocalStack, install_models, local_stack
from serving import store

__all__ = ["PredictionCounter", "ServiceError", "ServiceSettings", "remove_all_but_newest", "serve_forever",
           "start_plan"]

SEED_MARK = "seeded"
ABANDON_GRACE = 10.0  # seconds a run's process group gets to stop after SIGTERM, before SIGKILL
KEEP_RUN_LOGS = 50


_BOOTSTRAP_HINT = ("  Train one on your labelled images:  ctloop bootstrap --image-folder DIR --out {out}\n"
                   "  or on the bundled 8x8 digits:         ctloop bootstrap --out {out}")


class ServiceError(RuntimeError):
    """The work directory cannot be served as asked (nothing was started)."""


@dataclass(frozen=True)
class ServiceSettings:
    work_dir: Path
    config: PipelineConfig
    models: Path | None = None
    ports: StackPorts = StackPorts()
    poll_seconds: float = 1.0


def start_plan(work_dir: Path, models: Path | None) -> str:
    """"resume" a live work directory or "seed" an empty one from `models`; a ServiceError says
    why neither is possible. Decided from files alone, before any server starts."""
    if (work_dir / "seed" / SEED_MARK).is_file():
        return "resume"
    if (work_dir / "mlflow" / "mlflow.db").exists():
        raise ServiceError(f"{work_dir} holds a registry but no finished seed ({work_dir / 'seed' / SEED_MARK} is "
                           f"missing): an earlier start was stopped while seeding. Remove {work_dir} and start again.")
    if models is None:
        raise ServiceError(f"{work_dir} is empty: the first start needs --models, a `ctloop bootstrap` folder.\n"
                           + _BOOTSTRAP_HINT.format(out="MODELS"))
    try:
        bootstrap_files(models)
    except InstallError as error:
        raise ServiceError(f"{error}.\n" + _BOOTSTRAP_HINT.format(out=models)) from None
    return "seed"


def serve_forever(settings: ServiceSettings, say: Callable[[str], None] = print) -> None:
    """Serve and run the loop until SIGTERM or Ctrl-C (KeyboardInterrupt) stops it."""
    work_dir = settings.work_dir.resolve()
    schedule = parse_schedule(settings.config.schedule)
    plan = start_plan(work_dir, settings.models)
    service_dir = work_dir / "service"
    service_dir.mkdir(parents=True, exist_ok=True)
    for line in stop_leftovers(service_dir / "processes.json"):
        say(line)
    with local_stack(work_dir, ports=settings.ports) as stack:
        _record_processes(service_dir / "processes.json")
        if plan == "seed":
            champion = _seed(stack, settings.models)
            say(f"seeded {work_dir} from {settings.models}: champion v{champion}, b1 and b2 serve")
        else:
            champion = _resume(stack)
            ignored = f" (--models {settings.models} not used: it seeds an empty work directory only)"
            say(f"resumed {work_dir}: champion v{champion}{ignored if settings.models else ''}")
        config_file = service_dir / "config.yaml"
        write_atomic(config_file, yaml.safe_dump(settings.config.as_dict(), sort_keys=False).encode())
        for line in _addresses(stack):
            say(line)
        _loop(stack, settings, schedule, config_file, say)


def _seed(stack: LocalStack, models: Path) -> str:
    files = bootstrap_files(models)
    seed_dir = stack.work_dir / "seed"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for source in (files.train_set, files.golden_set):
        shutil.copyfile(source, seed_dir / source.name)
    champion = install_models(stack, files.model_files, seed_dir / "train.npz")
    (seed_dir / SEED_MARK).write_text(f"{models.resolve()}\n")
    return champion


def _resume(stack: LocalStack) -> str:
    """Serving comes back from the store's desired state; repair any split toward the registry."""
    found = operate.reconcile_fleet(stack.fleet)
    return found.champion


def _loop(stack: LocalStack, settings: ServiceSettings, schedule: Schedule, config_file: Path,
          say: Callable[[str], None]) -> None:
    state = ServiceState(stack.work_dir / "service" / "state.json", settings.config)
    counter = PredictionCounter(stack.store_dir)
    every = settings.config.run_every_predictions
    previous: datetime | None = None
    while True:
        due = schedule.next_after(previous, _now())
        state.update(next_run=due.isoformat(timespec="seconds"), running=None)
        say(f"next run {due.isoformat(timespec='seconds')}" + (f" or after {every} new predictions" if every else ""))
        trigger = _wait(due, counter, every, settings.poll_seconds)
        previous = _now()
        if counter.count() == 0:  # an idle line: the last run judged the same window
            state.update(skipped=previous.isoformat(timespec="seconds"))
            say("run skipped: no new prediction since the last run")
            continue
        counter.reset()
        say(f"run started ({trigger}, {counter.last} new predictions)")
        summary = _run_cycle(stack.work_dir, config_file, state, trigger)
        say(f"run {'succeeded' if summary.get('succeeded') else 'failed'}: champion "
            f"v{summary.get('champion_before')} -> v{summary.get('champion_after')}"
            + (f" ({summary['error']})" if summary.get("error") else ""))


def _wait(due: datetime, counter: "PredictionCounter", every: int, poll: float) -> str:
    while _now() < due:
        if every and counter.count() >= every:
            return f"{every} new predictions"
        time.sleep(min(poll, max(0.0, (due - _now()).total_seconds())))
    return "schedule"


def _run_cycle(work_dir: Path, config_file: Path, state: "ServiceState", trigger: str) -> dict:
    """Run `ctloop cycle` in a new process group; on KeyboardInterrupt (SIGTERM, Ctrl-C) abandon it."""
    runs = work_dir / "service" / "runs"
    runs.mkdir(exist_ok=True)
    stamp = _now().strftime("%Y%m%dT%H%M%S")
    summary_file, log_file = runs / f"{stamp}.json", runs / f"{stamp}.log"
    command = [sys.executable, "-m", "ctloop_app.cli", "cycle", "--stack", str(work_dir), "--config",
               str(config_file), "--summary", str(summary_file)]
    started = _now().isoformat(timespec="seconds")
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state.update(running={"pid": process.pid, "started": started, "trigger": trigger, "log": str(log_file)})
    _record_processes(work_dir / "service" / "processes.json", run=process.pid)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        _stop_group(process)
        state.update(running=None, last_run={"started": started, "trigger": trigger, "outcome": "abandoned",
                                             "log": str(log_file)})
        raise
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {
        "succeeded": False, "error": f"ctloop cycle exited {code} without a summary; see {log_file}"}
    state.update(running=None, last_run={"started": started, "ended": _now().isoformat(timespec="seconds"),
                                         "trigger": trigger, "outcome": "succeeded" if summary["succeeded"] else "failed",
                                         "log": str(log_file), **summary}, runs=state.data.get("runs", 0) + 1)
    _record_processes(work_dir / "service" / "processes.json")
    remove_all_but_newest(runs.iterdir(), 2 * KEEP_RUN_LOGS)  # a summary and a log per run
    return summary


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=ABANDON_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


class ServiceState:
    """`service/state.json`, rewritten atomically on every change: what `ctloop status` shows."""

    def __init__(self, path: Path, config: PipelineConfig) -> None:
        self.path = path
        previous = json.loads(path.read_text()) if path.is_file() else {}
        self.data = {"pid": os.getpid(), "started": _now().isoformat(timespec="seconds"),
                     "schedule": config.schedule, "run_every_predictions": config.run_every_predictions,
                     "runs": previous.get("runs", 0), "last_run": previous.get("last_run")}

    def update(self, **changes: object) -> None:
        self.data.update(changes)
        write_atomic(self.path, (json.dumps(self.data, indent=2) + "\n").encode())


class PredictionCounter:
    """New lines in the store's segments since the last reset, each segment read from where it
    last stopped (a new segment from its start)."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.offsets = {segment.log: _size(segment.log) for segment in store.list_segments(store_dir)}
        self.counted = self.last = 0

    def count(self) -> int:
        offsets = {}
        for segment in store.list_segments(self.store_dir):
            offset, size = self.offsets.get(segment.log, 0), _size(segment.log)
            if size > offset:
                with open(segment.log, "rb") as log:
                    log.seek(offset)
                    chunk = log.read(size - offset)
                offset += chunk.rfind(b"\n") + 1  # a half-written last line is counted once whole
                self.counted += chunk.count(b"\n")
            offsets[segment.log] = offset
        self.offsets = offsets
        return self.counted

    def reset(self) -> None:
        """Start counting afresh; `last` keeps what was counted until now."""
        self.last = self.count()
        self.counted = 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # pruned meanwhile
        return 0


def describe(work_dir: Path) -> list[str]:
    """The service's state for `ctloop status`: whether it runs, its schedule, its runs."""
    path = work_dir / "service" / "state.json"
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    alive = psutil.pid_exists(state["pid"])
    lines = [f"service: {'running' if alive else 'not running'} (pid {state['pid']}, started {state['started']}); "
             f"schedule {state['schedule']!r}" + (f", or every {state['run_every_predictions']} predictions"
                                                  if state["run_every_predictions"] else "")
             + f"; {state['runs']} run(s)"]
    if alive and state.get("running"):
        lines.append(f"service: a run is going since {state['running']['started']} ({state['running']['log']})")
    elif alive and state.get("next_run"):
        lines.append(f"service: next run {state['next_run']}")
    if alive and state.get("skipped"):
        lines.append(f"service: last skipped {state['skipped']} (no new prediction since the run before)")
    if last := state.get("last_run"):
        lines.append(f"service: last run {last['started']} {last['outcome']}" +
                     (f", champion v{last.get('champion_before')} -> v{last.get('champion_after')}"
                      if "champion_after" in last else "") + (f": {last['error']}" if last.get("error") else ""))
    return lines


def stop_leftovers(record: Path) -> list[str]:
    """Stop what a killed service left running (its servers, a run): the processes it recorded,
    if each still runs with the same start time (a pid reused by something else is left alone)."""
    if not record.is_file():
        return []
    entries = json.loads(record.read_text())
    left = [process for process in map(_still_running, entries) if process is not None]
    runs = {entry["pid"] for entry in entries if entry.get("group")} & {process.pid for process in left}
    # A run's stages started after the record was made: the run's whole process group goes.
    left += [member for member in psutil.process_iter() if member not in left and _group(member) in runs]
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=15)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    record.unlink()
    return [f"stopped {len(left)} process(es) an earlier service left running"] if left else []


def _still_running(entry: dict) -> psutil.Process | None:
    """The recorded process, if it runs still: the same pid with the same start time."""
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(entry["pid"])
        if abs(process.create_time() - entry["created"]) < 0.01:
            return process
    return None


def _record_processes(record: Path, run: int | None = None) -> None:
    """Everything this service runs now (servers, workers, the run `run` and its process group),
    for stop_leftovers after a kill -9 of the service."""
    children = psutil.Process().children(recursive=True)
    write_atomic(record, json.dumps([{"pid": child.pid, "created": child.create_time(), "group": child.pid == run}
                                     for child in children]).encode())


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _addresses(stack: LocalStack) -> list[str]:
    return [f"  inference:  {stack.torchserve.inference_url}/predictions/champion",
            f"  management: {stack.torchserve.management_url}/models",
            f"  keys:       {stack.torchserve.key_file}  (send 'Authorization: Bearer <key>')",
            f"  MLflow:     {stack.tracking_uri}",
            f"  predictions are logged to {stack.store_dir}",
            f"  state:      {stack.work_dir / 'service' / 'state.json'} (`ctloop status --stack {stack.work_dir}`)"]


def remove_all_but_newest(paths: Iterable[Path], keep: int) -> None:
    """Delete all but the `keep` most recently modified of `paths` (files or whole folders)."""
    for path in sorted(paths, key=lambda path: path.stat().st_mtime)[:-keep]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _now() -> datetime:
    return datetime.now().astimezone()

