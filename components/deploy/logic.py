"""deploy: serve the approved challenger as the new champion version, then move the aliases.

Under the serving lock (one deploy or repair of a model store at a time), the stage first repairs
any split between serving and the registry (components.deploy.reconcile). If MLflow's `champion`
alias no longer names the version this run's analyze compared against, another run deployed
since: this one is "superseded" and changes nothing. Otherwise the serving layer's deploy
registers, smoke-tests, switches the default and rolls back on any failure; then the `champion`
alias moves, by compare-and-set. If it cannot, serving is switched back too, so TorchServe and
the registry never disagree about which version is the champion. Only then is the desired state
(serving.state) written, and the versions beyond `keep_versions` are unregistered and their
archives deleted, so a restarted TorchServe serves exactly the champion.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.deploy.reconcile import reconcile
from ctloop import registry
from ctloop.canary import Canary
from serving import fleet
from serving.archive import build_archive
from serving.client import TorchServeClient, client_from_env
from serving.deploy import deploy
from serving.state import ServingState, read_state, write_state

__all__ = ["DeployFailedError", "DeployOutcome", "deploy_challenger", "deploy_to_torchserve"]

DEPLOYED = "deployed"
SUPERSEDED = "superseded"


class DeployFailedError(RuntimeError):
    """The new version was not deployed; the `champion` alias still names the previous champion."""


@dataclass(frozen=True)
class DeployOutcome:
    """What a successful deploy did.

    Attributes:
        new_version: the version now serving as the default (and MLflow's `champion`), or, when
            superseded, the version that was not deployed.
        old_version: the TorchServe default before the deploy; None if none served. When
            superseded: the champion that replaced the one this run compared against.
        previous_champion: the version MLflow's `previous-champion` alias now names; None if
            there was no champion before.
        canary_accuracy: accuracy of the new version on the canary images.
        steps: serving's deploy steps, each {"name", "seconds", "ok", "detail"}.
        removed_versions: older TorchServe versions unregistered to keep `keep_versions`.
        status: "deployed", or "superseded" (another run deployed first; nothing changed).
        repairs: what the repair before the deploy found and did (components.deploy.reconcile).
    """

    new_version: str
    old_version: str | None
    previous_champion: str | None
    canary_accuracy: float | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)
    status: str = DEPLOYED
    repairs: list[str] = field(default_factory=list)

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
        return {"old_version": self.old_version or "", "new_version": self.new_version, "status": self.status}


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
    decision: Path | None = None,
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
        decision: analyze's decision document; its `champion_version` is the champion this
            version must replace (compare-and-set). None: whatever is champion now.
    """
    client = client_from_env(inference_url, management_url)
    try:
        return deploy_challenger(Path(model_file), version, Path(canary_set), Path(model_store), client,
                                 registered_model, tracking_uri, keep_versions=keep_versions,
                                 replaces=_compared_against(decision) if decision is not None else None)
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
    replaces: str | None = None,
    lock_timeout: float = 900.0,
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
        replaces: the champion this version was judged against; None: whatever is champion now.
        lock_timeout: seconds to wait for another deploy of the same model store to finish.

    Raises:
        DeployFailedError: serving rolled the new version back, or the `champion` alias could
            not move and serving was switched back to the old default.
    """
    canary = Canary.load(canary_set)
    model_store = Path(model_store)
    with fleet.serving_lock(model_store, serving_name, lock_timeout):
        repair = reconcile(client, model_store, registered_model, tracking_uri, serving_name)
        champion = repair.champion
        if replaces is not None and champion not in (replaces, str(version)):
            return DeployOutcome(str(version), champion, None, None, status=SUPERSEDED, repairs=repair.findings)
        state = read_state(model_store) or ServingState()
        listed = state.models.get(serving_name)
        workers = listed.versions[listed.default].workers if listed else 1
        archive = build_archive(model_file, "champion", version, model_store, workers=workers)
        record = deploy(client, archive, serving_name, version, canary.images, canary.probabilities, canary.labels,
                        workers=workers)
        if record.outcome != "deployed":
            if archive.name not in state.archives():
                archive.unlink(missing_ok=True)
            what = "rolled back" if record.outcome == "rolled_back" else "not deployed and not fully rolled back"
            raise DeployFailedError(f"{serving_name} version {version} {what}: {record.reason}")
        try:
            previous = registry.promote_replacing(registered_model, version, champion, tracking_uri)
        except registry.RegistryError as error:
            _switch_back(client, serving_name, record.old_version, version)
            raise DeployFailedError(
                f"{serving_name} version {version} served but the registry alias could not move, "
                f"so serving was switched back to version {record.old_version}: {error}"
            ) from error
        removed = _settle(client, model_store, state.serve_archive(serving_name, version, archive, workers),
                          serving_name, keep_versions)
    return DeployOutcome(
        new_version=str(version),
        old_version=record.old_version,
        previous_champion=previous,
        canary_accuracy=record.canary_accuracy,
        steps=[asdict(step) for step in record.steps],
        removed_versions=removed,
        repairs=repair.findings,
    )


def _compared_against(decision: Path) -> str | None:
    """The champion version analyze judged the challenger against ("" in the document: none)."""
    try:
        return str(json.loads(Path(decision).read_text())["champion_version"]) or None
    except (OSError, ValueError, KeyError) as error:
        raise DeployFailedError(f"{decision} is not analyze's decision (with a champion_version): {error!r}") from error


def _settle(client: TorchServeClient, model_store: Path, state: ServingState, serving_name: str,
            keep_versions: int) -> list[str]:
    """Write the new desired state without the versions beyond the newest `keep_versions` (never
    the default), then unregister those and delete their archives; returns them."""
    model = state.model(serving_name)
    versions = sorted(model.versions, key=int)
    doomed = [version for version in versions[: max(len(versions) - keep_versions, 0)] if version != model.default]
    state = state.without(serving_name, doomed)
    write_state(model_store, state)
    fleet.apply(client, state, serving_name)
    fleet.remove_stray_archives(model_store, state, serving_name)
    return doomed


def _switch_back(client: TorchServeClient, serving_name: str, old: str | None, new: str) -> None:
    """Undo a deploy whose alias could not move: the old default serves again, the new version goes."""
    if old is not None:
        client.set_default(serving_name, old)
        client.unregister(serving_name, new)
