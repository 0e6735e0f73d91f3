"""The local serving stack: TorchServe with the three model roles, and an MLflow registry.

This is what `make run`, `ctloop serve` and the end-to-end tests start: one TorchServe (token
authorization on, predictions logged to a store), MLflow as a tracking server on SQLite (or the
SQLite file directly, which is faster to start in tests), the champion registered in MLflow as
version 1 with the alias `champion`, and the champion, B1 and B2 served as TorchServe models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from ctloop import registry
from ctloop_app.install import BRANCH_VERSION, REGISTERED_MODEL
from ctloop_app.mlflow_server import MlflowServer
from ctloop_app.operate import Fleet
from serving.archive import build_archive
from serving.client import TorchServeClient
from ctloop_app.ports import StackPorts
from serving.server import LocalTorchServe
from serving.state import ServingState, write_state

__all__ = ["BRANCH_VERSION", "REGISTERED_MODEL", "LocalStack", "install_models", "local_stack", "serve_models"]


@dataclass
class LocalStack:
    work_dir: Path
    torchserve: LocalTorchServe
    tracking_uri: str
    client: TorchServeClient

    @property
    def store_dir(self) -> Path:
        return self.work_dir / "store"

    @property
    def model_store(self) -> Path:
        return self.torchserve.model_store

    @property
    def slack_outbox(self) -> Path:
        return self.work_dir / "slack_outbox.jsonl"

    @property
    def fleet(self) -> Fleet:
        """Where serving and its registry are, as `ctloop status` and a service's cycles find them."""
        return Fleet(self.model_store, self.torchserve.inference_url, self.torchserve.management_url,
                     self.tracking_uri, REGISTERED_MODEL, self.torchserve.key_file)

    def stage_environment(self) -> dict[str, str]:
        """What the pipeline's stages read from their environment when run against this stack."""
        return stage_environment(self.fleet, self.slack_outbox)


def stage_environment(fleet: Fleet, slack_outbox: Path) -> dict[str, str]:
    """What the pipeline's stages read from their environment: TorchServe's keys, Slack's outbox."""
    return {"CTLOOP_TS_KEY_FILE": str(fleet.key_file), "CTLOOP_SLACK_OUTBOX": str(slack_outbox)}


@contextlib.contextmanager
def local_stack(work_dir: str | Path, mlflow_server: bool = True, ports: StackPorts | None = None) -> Iterator[LocalStack]:
    """Start TorchServe (and an MLflow server, unless `mlflow_server` is False); stop both on exit.

    `ports`: fixed ports (checked free first); None: free ones, different at every start."""
    work_dir = Path(work_dir).resolve()
    if ports is not None:
        ports.check_free()
    with contextlib.ExitStack() as stack:
        if mlflow_server:
            mlflow = MlflowServer(work_dir / "mlflow", port=ports.mlflow if ports else None)
            tracking_uri = stack.enter_context(mlflow).tracking_uri
        else:
            (work_dir / "mlflow").mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{work_dir / 'mlflow' / 'mlflow.db'}"
        torchserve = stack.enter_context(LocalTorchServe(work_dir / "torchserve", ports.torchserve() if ports else None,
                                                         store_dir=work_dir / "store"))
        client = TorchServeClient(torchserve.inference_url, torchserve.management_url, torchserve.keys())
        stack.callback(client.close)
        local = LocalStack(work_dir, torchserve, tracking_uri, client)
        # For `ctloop status`, `promote`, `rollback`, `reconcile` and `cycle --stack WORK_DIR` while it runs.
        stack.callback(local.fleet.save(work_dir).unlink, missing_ok=True)
        yield local


def install_models(
    stack: LocalStack, model_files: dict[str, Path], train_set: Path, workers: int = 1
) -> str:
    """Register the champion in MLflow (alias `champion`) and serve champion, B1 and B2.

    Returns the champion's registry version, which is also its TorchServe version.
    """
    version = registry.register_model_file(REGISTERED_MODEL, model_files["champion"], train_set,
                                           tracking_uri=stack.tracking_uri)
    registry.promote(REGISTERED_MODEL, version, stack.tracking_uri)
    serve_models(stack, {role: model_files[role] for role in ("champion", "b1", "b2")}, version, workers)
    return version


def serve_models(stack: LocalStack, model_files: Mapping[str, Path], version: str, workers: int = 1) -> None:
    """Serve each role of `model_files`, the champion as `version` and B1 and B2 as BRANCH_VERSION,
    without the registry (install_models registers the champion first)."""
    state = ServingState()
    for role, model_file in model_files.items():
        role_version = version if role == "champion" else BRANCH_VERSION
        archive = build_archive(model_file, role, role_version, stack.model_store, workers=workers)
        stack.client.register(archive.name, role, initial_workers=workers)
        state = state.serve_archive(role, role_version, archive, workers)
    write_state(stack.model_store, state)  # what a restarted TorchServe serves (serving.state)


