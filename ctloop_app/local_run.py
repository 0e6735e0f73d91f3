"""Run the pipeline on this machine with kfp.local's SubprocessRunner: no Docker, no cluster.

Each task runs as its own Python process of this environment (the stage images' contents are
this package), forked from a warm interpreter (ctloop_app.warm_tasks), and its outputs land under
`pipeline_root`. The run is returned as a record of every task: status, wall time (which includes
its process's start-up, and in a process's first run the first task's wait for the warm-up) and
outputs.
"""

import contextlib
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kfp import local

from ctloop_app import warm_tasks

if TYPE_CHECKING:
    from ctloop.config import PipelineConfig
    from ctloop_app.operate import Fleet
    from ctloop_app.stack import LocalStack

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '?([\w.-]+)'?")
_FINISHED = re.compile(r"Task '?([\w.-]+)'? finished with status (\w+)")


@dataclass
class TaskRecord:
    name: str
    status: str = "RUNNING"
    seconds: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LocalRun:
    run_dir: Path | None
    succeeded: bool
    error: str | None
    seconds: float
    tasks: dict[str, TaskRecord]

    def task(self, name: str) -> TaskRecord | None:
        """The task whose component is `name` (e.g. "consensus-op"), if it ran."""
        return self.tasks.get(name)


class _TaskTimer(logging.Filter):
    """Reads kfp.local's "Executing task"/"finished" log lines to time each task.

    A filter on the root logger rather than a handler, because kfp.local replaces the root
    logger's handlers while it runs; it only observes and lets every record through.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, float] = {}
        self.tasks: dict[str, TaskRecord] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        self._observe(record)
        return True

    def _observe(self, record: logging.LogRecord) -> None:
        message = _ANSI.sub("", record.getMessage())
        if match := _STARTED.search(message):
            self.started[match[1]] = record.created
            self.tasks[match[1]] = TaskRecord(match[1])
        elif (match := _FINISHED.search(message)) and match[1] in self.tasks:
            task = self.tasks[match[1]]
            task.status = match[2]
            task.seconds = record.created - self.started[match[1]]


def run_locally(pipeline_func: Callable, arguments: dict[str, Any], pipeline_root: str | Path,
                runner: "local.SubprocessRunner | local.DockerRunner | None" = None) -> LocalRun:
    """Run `pipeline_func(**arguments)` with kfp.local; failures are recorded, not raised.

    `runner` defaults to a SubprocessRunner in this environment whose tasks fork from a warm
    interpreter; ctloop_app.container_run passes a DockerRunner that runs every task in its
    stage's image."""
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    if runner is None:
        warm_tasks.install()
    timer = _TaskTimer()
    root_logger = logging.getLogger()
    root_logger.addFilter(timer)
    started = time.monotonic()
    error = None
    try:
        with warnings.catch_warnings():
            # The stage images are named per stage (ctloop-train, ...), not "python"; kfp.local
            # warns about that although the SubprocessRunner runs them in this environment.
            warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
            # Display names are for the Kubeflow UI; the local runner says it ignores them.
            warnings.filterwarnings("ignore", message=r"Task '.*': settings \['display_name'\]", category=UserWarning)
            pipeline_func(**arguments)
    except RuntimeError as failure:
        error = _ANSI.sub("", str(failure))
    finally:
        root_logger.removeFilter(timer)
    run_dirs = sorted(path for path in set(pipeline_root.iterdir()) - before if path.is_dir())
    run_dir = run_dirs[-1] if run_dirs else None
    if run_dir is not None:
        _read_outputs(run_dir, timer.tasks)
    return LocalRun(run_dir, error is None, error, time.monotonic() - started, timer.tasks)


def _read_outputs(run_dir: Path, tasks: dict[str, TaskRecord]) -> None:
    for name, task in tasks.items():
        output_file = run_dir / name / "executor_output.json"
        if not output_file.is_file():
            continue
        output = json.loads(output_file.read_text())
        task.parameters = output.get("parameterValues", {})
        for artifact_name, entry in output.get("artifacts", {}).items():
            first = entry["artifacts"][0]
            task.artifacts[artifact_name] = {"uri": first["uri"], "metadata": first.get("metadata", {})}


def fleet_arguments(fleet: "Fleet", store_dir: Path, golden_set: Path) -> dict[str, Any]:
    """The pipeline's service parameters for a local fleet (the rest keep their config defaults)."""
    return {
        "store_dir": str(store_dir),
        "model_store": str(fleet.model_store),
        "golden_set_uri": str(Path(golden_set).resolve()),
        "ts_inference_url": fleet.inference_url,
        "ts_management_url": fleet.management_url,
        "mlflow_tracking_uri": fleet.tracking_uri,
        "registered_model": fleet.registered_model,
    }


def run_cycle(stack: "LocalStack", config: "PipelineConfig", golden_set: Path, pipeline_root: Path) -> LocalRun:
    """One continuous-training cycle against a local stack, with `config` as parameters."""
    return run_fleet_cycle(stack.fleet, stack.store_dir, stack.slack_outbox, config, golden_set, pipeline_root)


def run_fleet_cycle(fleet: "Fleet", store_dir: Path, slack_outbox: Path, config: "PipelineConfig", golden_set: Path,
                    pipeline_root: Path) -> LocalRun:
    """One cycle against a running stack that this process did not start (`ctloop cycle`)."""
    from ctloop_app.stack import stage_environment
    from kubeflow_pipeline.pipeline import build_pipeline

    with _environment(stage_environment(fleet, slack_outbox)):
        return run_locally(build_pipeline(config), fleet_arguments(fleet, store_dir, golden_set), pipeline_root)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set the stages' environment for a local pipeline run, restoring it afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
