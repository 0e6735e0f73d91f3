"""`ctloop cycle`: one pipeline run against a running local stack, what `ctloop serve` schedules.

It runs in a process of its own (the service starts it in a new process group, so that stopping
the service can abandon a run whole, stage processes included). One run at a time per work
directory: a file lock, taken without waiting; a second run finds it held and says so. The run's
summary (outcome, champion before and after, the stages' figures) is written as JSON for the
service's state. After each run, only the newest kfp.local run folders are kept under
`pipeline_root`, and MLflow keeps the newest `registry_keep_versions` versions (and those an
alias names): older versions and their runs are deleted, and `mlflow gc` removes the runs'
artifacts (models, training sets) from the service's artifact store for good.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ctloop import registry
from ctloop.config import PipelineConfig
from ctloop.images import write_atomic
from ctloop_app.figures import cycle_figures
from ctloop_app.local_run import run_fleet_cycle
from ctloop_app.operate import Fleet
from ctloop_app.service import remove_all_but_newest

__all__ = ["CycleBusyError", "CycleSummary", "KEEP_RUN_FOLDERS", "prune_registry", "run_cycle_in"]

KEEP_RUN_FOLDERS = 5  # kfp.local run folders (every stage's artifacts, training sets included) kept


class CycleBusyError(RuntimeError):
    """Another run holds the work directory's run lock."""


@dataclass(frozen=True)
class CycleSummary:
    succeeded: bool
    error: str | None
    seconds: float
    champion_before: str | None
    champion_after: str | None
    stages: list[str]
    figures: dict[str, Any]
    pruned_versions: list[str]

    def write(self, path: Path) -> None:
        write_atomic(path, (json.dumps(asdict(self), indent=2) + "\n").encode())


def _layout(work_dir: Path) -> dict[str, Path]:
    """Where a service's work directory keeps what a run reads and writes."""
    return {"store": work_dir / "store", "golden_set": work_dir / "seed" / "golden.npz",
            "slack_outbox": work_dir / "slack_outbox.jsonl", "pipeline_root": work_dir / "pipeline_root",
            "run_lock": work_dir / ".run.lock"}


def run_cycle_in(work_dir: Path, config: PipelineConfig) -> CycleSummary:
    """Run the pipeline once against the stack serving from `work_dir` (its stack.json)."""
    layout = _layout(work_dir)
    fleet = Fleet.load(work_dir)
    lock = FileLock(layout["run_lock"])
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CycleBusyError(f"another run of {work_dir} is going (it holds {layout['run_lock']})") from None
    try:
        before = registry.get_version_by_alias(fleet.registered_model, registry.CHAMPION, fleet.tracking_uri)
        run = run_fleet_cycle(fleet, layout["store"], layout["slack_outbox"], config,
                              layout["golden_set"], layout["pipeline_root"])
        after = registry.get_version_by_alias(fleet.registered_model, registry.CHAMPION, fleet.tracking_uri)
        remove_all_but_newest((path for path in layout["pipeline_root"].iterdir() if path.is_dir()),
                              KEEP_RUN_FOLDERS)
        pruned = prune_registry(fleet, work_dir / "mlflow" / "mlflow.db", config.registry_keep_versions)
    finally:
        lock.release()
    return CycleSummary(run.succeeded, run.error, round(run.seconds, 3), before, after, list(run.tasks),
                        cycle_figures(run), pruned)


def prune_registry(fleet: Fleet, database: Path, keep: int) -> list[str]:
    """Delete the versions beyond the newest `keep` and their runs; then, if the registry is the
    service's own SQLite database, collect the deleted runs' artifacts through its server."""
    pruned = registry.prune_versions(fleet.registered_model, keep, fleet.tracking_uri, delete_runs=True)
    if pruned and database.is_file():
        subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", f"sqlite:///{database}"],
                       env={**os.environ, "MLFLOW_TRACKING_URI": fleet.tracking_uri}, check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
    return pruned
