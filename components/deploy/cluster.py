"""deploy and reconcile on a Kubernetes cluster: every replica, through the Deployment's rollout.

On a cluster the TorchServe management API reaches one pod of several, so the deploy stage does
not register there (components.deploy.logic does that on one machine). Under the deploy Lease:
repair first (the ConfigMap's champion must be MLflow's), "superseded" if the alias no longer
names the champion analyze compared against, then write the new desired state (new version as
default, pruned to `keep_versions`) into the ConfigMap and roll the Deployment
(serving.rollout), smoke-test every new pod directly from the Service's EndpointSlices, and move
the alias by compare-and-set. Any failure writes the previous state back and rolls again, so
the pods and the registry never disagree about the champion.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import kubernetes

from components.deploy.outcome import SUPERSEDED, DeployFailedError, DeployOutcome
from ctloop import registry
from ctloop.canary import Canary
from serving.archive import archive_name, build_archive
from serving.client import TorchServeClient, TorchServeError
from serving.deploy import DeployCheckError, check_answers
from serving.fleet import remove_stray_archives
from serving.rollout import RolloutError, ServingDeployment, deploy_lease
from serving.state import ServingState, StateError, model_sha256, read_state

__all__ = ["DEPLOY_LEASE", "deploy_on_cluster", "reconcile_on_cluster", "serving_deployment_from_env"]

SERVING_NAME = "champion"
DEPLOY_LEASE = f"ctloop-deploy-{SERVING_NAME}"
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def serving_deployment_from_env() -> ServingDeployment | None:
    """The cluster's TorchServe Deployment when CTLOOP_SERVING_DEPLOYMENT names it (the pipeline's
    ConfigMap does on the cluster), called with the step pod's service account; None on one
    machine, where the deploy registers through TorchServe's management API."""
    name = os.environ.get("CTLOOP_SERVING_DEPLOYMENT")
    if not name:
        return None
    kubernetes.config.load_incluster_config()
    namespace = os.environ.get("CTLOOP_SERVING_NAMESPACE") or POD_NAMESPACE_FILE.read_text().strip()
    return ServingDeployment(kubernetes.client.ApiClient(), namespace, deployment=name)


def deploy_on_cluster(model_file: Path, version: str, canary_set: Path, model_store: Path,
                      fleet: ServingDeployment, keys: dict[str, str], registered_model: str,
                      tracking_uri: str | None, replaces: str | None = None, keep_versions: int = 3,
                      rollout_timeout: float = 900.0) -> DeployOutcome:
    """Deploy `model_file` as registry version `version` to every replica (module docstring)."""
    canary = Canary.load(canary_set)
    with deploy_lease(fleet.api, fleet.namespace, DEPLOY_LEASE, _holder()):
        repairs = reconcile_on_cluster(fleet, model_store, registered_model, tracking_uri, rollout_timeout)
        champion = registry.get_version_by_alias(registered_model, registry.CHAMPION, tracking_uri)
        if replaces is not None and champion not in (replaces, str(version)):
            return DeployOutcome(str(version), champion, None, None, status=SUPERSEDED, repairs=repairs)
        state = _desired(fleet, model_store) or ServingState()
        listed = state.models.get(SERVING_NAME)
        workers = listed.versions[listed.default].workers if listed else 1
        archive = build_archive(model_file, SERVING_NAME, version, model_store, workers=workers)
        wanted, removed = state.serve_archive(SERVING_NAME, version, archive, workers).keep_newest(
            SERVING_NAME, keep_versions)
        steps: list[dict[str, object]] = []
        try:
            _timed(steps, "roll_out", lambda: (fleet.write_state(wanted), fleet.roll(wanted, rollout_timeout)))
            _timed(steps, "smoke_test_pods", lambda: _smoke_test_pods(fleet, keys, canary, str(version)))
            previous = registry.promote_replacing(registered_model, version, champion, tracking_uri)
        except (RolloutError, DeployCheckError, TorchServeError, registry.RegistryError) as error:
            _timed(steps, "roll_back", lambda: (fleet.write_state(state), fleet.roll(state, rollout_timeout)))
            if archive.name not in state.archives():
                archive.unlink(missing_ok=True)
            raise DeployFailedError(f"{SERVING_NAME} version {version} rolled back on every replica: {error}") from error
        remove_stray_archives(model_store, wanted, SERVING_NAME)
    return DeployOutcome(str(version), listed.default if listed else None, previous, None, steps, removed,
                         repairs=repairs)


def reconcile_on_cluster(fleet: ServingDeployment, model_store: Path, registered_model: str,
                         tracking_uri: str | None, rollout_timeout: float = 900.0) -> list[str]:
    """Make the ConfigMap's champion default MLflow's `champion`, with an archive of the
    registered model, and roll the replicas to it; returns what differed. The caller holds the Lease."""
    champion = registry.get_version_by_alias(registered_model, registry.CHAMPION, tracking_uri)
    state = _desired(fleet, model_store)
    if champion is None or state is None:
        return []
    listed = state.models.get(SERVING_NAME)
    archive = Path(model_store) / archive_name(SERVING_NAME, champion)
    expected = registry.model_sha256(registered_model, champion, tracking_uri)
    if listed is not None and listed.default == champion and _sha256(archive) == expected:
        return []
    findings = []
    if listed is None or listed.default != champion:
        findings.append(f"the replicas' {SERVING_NAME} default was v{listed.default if listed else None}, "
                        f"the registry's champion is v{champion}")
    if _sha256(archive) != expected:
        findings.append(f"the archive of {SERVING_NAME} v{champion} was missing or not the registered model; "
                        "rebuilt it from the registry")
        with tempfile.TemporaryDirectory(prefix="ctloop-reconcile-") as folder:
            files = registry.download_version(registered_model, champion, folder, tracking_uri)
            build_archive(files.model_file, SERVING_NAME, champion, model_store)
    repaired = state.serve_archive(SERVING_NAME, champion, archive, listed.versions[listed.default].workers
                                   if listed else 1)
    fleet.write_state(repaired)
    fleet.roll(repaired, rollout_timeout)
    return findings


def _desired(fleet: ServingDeployment, model_store: Path) -> ServingState | None:
    """The ConfigMap's state; before the first deploy on the cluster, the model store's, which
    `ctloop install` wrote and the pods started from."""
    return fleet.read_state() or read_state(model_store)


def _smoke_test_pods(fleet: ServingDeployment, keys: dict[str, str], canary: Canary, version: str) -> None:
    """Every ready pod, asked directly, answers the canary as the model does in-process, as `version`."""
    urls = fleet.pod_urls()
    if not urls:
        raise DeployCheckError(f"no ready pod of Service {fleet.service} to smoke-test")
    for url in urls:
        client = TorchServeClient(url, url, keys)
        try:
            check_answers(client, SERVING_NAME, canary.images, canary.probabilities, 1e-4, None, version)
        except DeployCheckError as error:
            raise DeployCheckError(f"pod {url}: {error}") from error
        finally:
            client.close()


def _sha256(archive: Path) -> str | None:
    try:
        return model_sha256(archive) if archive.is_file() else None
    except StateError:
        return None


def _timed(steps: list[dict[str, object]], name: str, action) -> None:
    start = time.monotonic()
    action()
    steps.append({"name": name, "seconds": time.monotonic() - start, "ok": True, "detail": ""})


def _holder() -> str:
    """Who holds the Lease: the step's pod (its hostname) and process."""
    return f"{socket.gethostname()}/{os.getpid()}"
