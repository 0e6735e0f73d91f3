"""deploy: serve the approved challenger as the new champion version, then move the aliases.

The serving layer's deploy registers, smoke-tests, switches the default and rolls back on any
failure. Only after the new version answers as default does MLflow's `champion` alias move;
if that move fails, serving is switched back too, so TorchServe and the registry never disagree
about which version is the champion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctloop import registry
from ctloop.canary import Canary
from serving.archive import build_archive
from serving.client import TorchServeClient, TorchServeError, client_from_env
from serving.deploy import deploy

__all__ = ["DeployFailedError", "DeployOutcome", "deploy_challenger", "deploy_to_torchserve"]


class DeployFailedError(RuntimeError):
    """The new version was not deployed; the `champion` alias still names the previous champion."""


@dataclass(frozen=True)
class DeployOutcome:
    """What a successful deploy did.

    Attributes:
        new_version: the version now serving as the default (and MLflow's `champion`).
        old_version: the TorchServe default before the deploy; None if none served.
        previous_champion: the version MLflow's `previous-champion` alias now names; None if
            there was no champion before.
        canary_accuracy: accuracy of the new version on the canary images.
        steps: serving's deploy steps, each {"name", "seconds", "ok", "detail"}.
        removed_versions: older TorchServe versions unregistered to keep `keep_versions`.
    """

    new_version: str
    old_version: str | None
    previous_champion: str | None
    canary_accuracy: float | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Seconds per deploy step (`<step>_seconds`) and the canary accuracy when known."""
        figures = {f"{step['name']}_seconds": float(step["seconds"]) for step in self.steps}
        if self.canary_accuracy is not None:
            figures["canary_accuracy"] = self.canary_accuracy
        return figures

    def outputs(self) -> dict[str, str]:
        """The stage's outputs by name; old_version is "" when nothing served before (a kfp
        output cannot be None)."""
        return {"old_version": self.old_version or "", "new_version": self.new_version}


def deploy_to_torchserve(
    model_file: Path,
    version: str,
    canary_set: Path,
    model_store: Path,
    inference_url: str,
    management_url: str,
    tracking_uri: str | None,
    registered_model: str,
    keep_versions: int = 3,
) -> DeployOutcome:
    """The deploy stage: deploy_challenger on the TorchServe at these URLs, keys from the
    environment (serving.client.client_from_env), never from pipeline parameters, which Kubeflow
    shows to anyone who can see the run.

    Args:
        model_file: the challenger's TorchScript file.
        version: its MLflow model version, which becomes its TorchServe version.
        canary_set: the Canary (.npz) analyze wrote: images, labels, in-process answers.
        model_store: TorchServe's model store directory.
        inference_url: TorchServe inference API.
        management_url: TorchServe management API.
        tracking_uri: MLflow tracking URI ("" or None: MLFLOW_TRACKING_URI).
        registered_model: the MLflow registered model name.
        keep_versions: TorchServe versions kept; older non-default ones are unregistered.
    """
    client = client_from_env(inference_url, management_url)
    try:
        return deploy_challenger(Path(model_file), version, Path(canary_set), Path(model_store), client,
                                 registered_model, tracking_uri, keep_versions=keep_versions)
    finally:
        client.close()


def deploy_challenger(
    model_file: Path,
    version: str,
    canary_set: Path,
    model_store: Path,
    client: TorchServeClient,
    registered_model: str,
    tracking_uri: str | None,
    serving_name: str = "champion",
    keep_versions: int = 3,
) -> DeployOutcome:
    """Deploy `model_file` (registry version `version`) as the default `serving_name` version.

    Args:
        model_file: the challenger's TorchScript file.
        version: its MLflow model version, which becomes its TorchServe version.
        canary_set: the Canary (.npz): images whose answers from the new version must equal
            the in-process answers it holds, and their labels (for the canary's accuracy).
        model_store: TorchServe's model store directory, where the archive is written.
        client: TorchServe client with management and inference keys.
        registered_model: the MLflow registered model name.
        tracking_uri: MLflow tracking URI ("" or None: MLFLOW_TRACKING_URI).
        serving_name: TorchServe model name of the champion.
        keep_versions: TorchServe versions kept; older non-default ones are unregistered.

    Raises:
        DeployFailedError: serving rolled the new version back, or the `champion` alias could
            not move and serving was switched back to the old default.
    """
    canary = Canary.load(canary_set)
    workers = _default_workers(client, serving_name)
    archive = build_archive(model_file, "champion", version, model_store, workers=workers)
    record = deploy(client, archive, serving_name, version, canary.images, canary.probabilities, canary.labels,
                    workers=workers)
    if record.outcome != "deployed":
        archive.unlink(missing_ok=True)
        what = "rolled back" if record.outcome == "rolled_back" else "not deployed and not fully rolled back"
        raise DeployFailedError(f"{serving_name} version {version} {what}: {record.reason}")
    try:
        previous = registry.promote(registered_model, version, tracking_uri)
    except registry.RegistryError as error:
        _switch_back(client, serving_name, record.old_version, version)
        raise DeployFailedError(
            f"{serving_name} version {version} served but the registry alias could not move, "
            f"so serving was switched back to version {record.old_version}: {error}"
        ) from error
    removed = client.keep_newest(serving_name, keep_versions)
    return DeployOutcome(
        new_version=str(version),
        old_version=record.old_version,
        previous_champion=previous,
        canary_accuracy=record.canary_accuracy,
        steps=[asdict(step) for step in record.steps],
        removed_versions=removed,
    )


def _default_workers(client: TorchServeClient, serving_name: str) -> int:
    """The new version gets as many workers as the current default has (1 if none serves)."""
    try:
        default = client.default_version(serving_name)
        return max(1, client.ready_workers(serving_name, default))
    except TorchServeError:
        return 1


def _switch_back(client: TorchServeClient, serving_name: str, old: str | None, new: str) -> None:
    """Undo a deploy whose alias could not move: the old default serves again, the new version goes."""
    if old is not None:
        client.set_default(serving_name, old)
        client.unregister(serving_name, new)
