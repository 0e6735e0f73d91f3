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
from dataclasses import asdict
from pathlib import Path

from components.deploy.cluster import deploy_on_cluster, serving_deployment_from_env
from components.deploy.outcome import DEPLOYED, SUPERSEDED, DeployFailedError, DeployOutcome
from components.deploy.reconcile import reconcile
from ctloop import registry
from ctloop.canary import Canary
from serving import fleet
from serving.archive import build_archive
from serving.client import TorchServeClient, client_from_env
from serving.deploy import deploy
from serving.state import ServingState, read_state, write_state

__all__ = ["DEPLOYED", "SUPERSEDED", "DeployFailedError", "DeployOutcome", "deploy_challenger",
           "deploy_to_torchserve"]

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
    shows to anyone who can see the run; on a cluster (CTLOOP_SERVING_DEPLOYMENT set),
    components.deploy.cluster.deploy_on_cluster to every replica instead. The model file must be
    the one registered as `version` (its sha256 tag): otherwise IntegrityError, and nothing is
    deployed.

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
    expected = registry.model_sha256(registered_model, version, tracking_uri)
    registry.verify_file(Path(model_file), expected, registered_model, version)  # before anything changes
    client = client_from_env(inference_url, management_url)
    replaces = _compared_against(decision) if decision is not None else None
    try:
        on_cluster = serving_deployment_from_env()
        if on_cluster is not None:  # every replica, through the Deployment's rollout
            return deploy_on_cluster(Path(model_file), version, Path(canary_set), Path(model_store), on_cluster,
                                     client.keys, registered_model, tracking_uri, replaces, keep_versions)
        return deploy_challenger(Path(model_file), version, Path(canary_set), Path(model_store), client,
                                 registered_model, tracking_uri, keep_versions=keep_versions, replaces=replaces)
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
            _switch_back(client, serving_name, record.old_version, version,
                         None if archive.name in state.archives() else archive)
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
    state, doomed = state.keep_newest(serving_name, keep_versions)
    write_state(model_store, state)
    fleet.apply(client, state, serving_name)
    fleet.remove_stray_archives(model_store, state, serving_name)
    return doomed


def _switch_back(client: TorchServeClient, serving_name: str, old: str | None, new: str,
                 archive: Path | None) -> None:
    """Undo a deploy whose alias could not move: the old default serves again, the new version
    goes, and so does `archive`, the new version's archive (None: the desired state lists it)."""
    if old is not None:
        client.set_default(serving_name, old)
        client.unregister(serving_name, new)
        if archive is not None:
            archive.unlink(missing_ok=True)
