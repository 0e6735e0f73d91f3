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
from ctloop.images import ImageSet
from serving.archive import build_archive
from serving.client import TorchServeClient, TorchServeError
from serving.deploy import deploy


class DeployFailedError(RuntimeError):
    """The new version was not deployed; the `champion` alias still names the previous champion."""


@dataclass(frozen=True)
class DeployOutcome:
    new_version: str
    old_version: str | None
    previous_champion: str | None
    canary_accuracy: float | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    canary_size: int = 64,
) -> DeployOutcome:
    """Deploy `model_file` (registry version `version`) as the default `serving_name` version.

    Args:
        model_file: the challenger's TorchScript file.
        version: its MLflow model version, which becomes its TorchServe version.
        canary_set: labelled ImageSet (.npz) whose first `canary_size` images smoke-test it.
        model_store: TorchServe's model store directory, where the archive is written.
        client: TorchServe client with management and inference keys.
        registered_model: the MLflow registered model name.
        tracking_uri: MLflow tracking URI (None: MLFLOW_TRACKING_URI).
        serving_name: TorchServe model name of the champion.
        keep_versions: TorchServe versions kept; older non-default ones are unregistered.
        canary_size: how many canary images to send.
    """
    canary = ImageSet.load(canary_set)
    canary = canary.subset(slice(0, canary_size))
    workers = _default_workers(client, serving_name)
    archive = build_archive(model_file, "champion", version, model_store, workers=workers)
    record = deploy(client, archive, serving_name, version, canary.images, model_file, canary.labels,
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
    if old is not None:
        client.set_default(serving_name, old)
        client.unregister(serving_name, new)
