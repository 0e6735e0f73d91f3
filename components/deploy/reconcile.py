"""Repair any split between what serves and what the registry says is the champion.

MLflow's `champion` alias is the record. `reconcile` makes the desired state (serving.state)
name it as the default, with an archive whose model file has the registered version's sha256
(rebuilt from the registry when it is missing or differs), then makes TorchServe serve exactly
that state (serving.fleet.apply) and deletes archives the state no longer lists. It returns
what it found, one sentence per difference: nothing when serving and registry agree.

Splits it repairs: a TorchServe restarted without a state, or from an old one (a crash between
the alias move and the state write); a default switched before the alias could move (a crash in
the middle of a deploy); an archive replaced or deleted by hand; versions registered by a deploy
that died. The caller holds the serving lock (serving.fleet.serving_lock).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from components.deploy.cluster import DEPLOY_LEASE, reconcile_on_cluster, serving_deployment_from_env
from ctloop import registry, slack
from ctloop.alerts import deliver
from serving import fleet
from serving.archive import archive_name, build_archive
from serving.client import TorchServeClient, client_from_env
from serving.rollout import deploy_lease
from serving.state import ServedVersion, ServingState, StateError, model_sha256, read_state, write_state

__all__ = ["Reconciliation", "reconcile", "reconcile_serving", "repaired"]


@dataclass(frozen=True)
class Reconciliation:
    """champion: the version MLflow's alias names (None: no champion yet, nothing compared);
    findings: each difference found and what was done about it."""

    champion: str | None
    findings: list[str] = field(default_factory=list)


def reconcile_serving(model_store: Path, inference_url: str, management_url: str, tracking_uri: str | None,
                      registered_model: str, run_name: str | None = None) -> Reconciliation:
    """The reconcile step every pipeline run starts with: under the serving lock, `reconcile` the
    TorchServe at these URLs (keys from the environment), and tell Slack what it repaired."""
    tracking_uri = tracking_uri or None
    on_cluster = serving_deployment_from_env()
    if on_cluster is not None:  # every replica: the ConfigMap they start from, under the deploy Lease
        with deploy_lease(on_cluster.api, on_cluster.namespace, DEPLOY_LEASE, f"reconcile/{run_name}"):
            findings = reconcile_on_cluster(on_cluster, Path(model_store), registered_model, tracking_uri)
        champion = registry.get_version_by_alias(registered_model, registry.CHAMPION, tracking_uri)
        result = Reconciliation(champion, findings)
    else:
        with contextlib.closing(client_from_env(inference_url, management_url)) as client, \
                fleet.serving_lock(model_store, "champion"):
            result = reconcile(client, Path(model_store), registered_model, tracking_uri)
    if result.findings:
        deliver(repaired(result, run_name))
    return result


def repaired(result: Reconciliation, run_name: str | None = None) -> slack.Message:
    """Slack: serving and the registry disagreed, and how that was repaired."""
    bullets = "\n".join(f"\u2022 {slack.escape(finding)}" for finding in result.findings)
    findings = slack.escape("; ".join(result.findings))
    text = f"Serving repaired to the registry's champion v{result.champion}: {findings}"
    blocks = [slack.header("Serving repaired"),
              slack.section(f"Serving now matches MLflow's champion *v{slack.escape(str(result.champion))}*."),
              slack.section(slack.clip(bullets))]
    return slack.message(text, blocks, run_name)


def reconcile(client: TorchServeClient, model_store: Path, registered_model: str, tracking_uri: str | None,
              serving_name: str = "champion") -> Reconciliation:
    """Make serving agree with the `champion` alias (see the module docstring)."""
    champion = registry.get_version_by_alias(registered_model, registry.CHAMPION, tracking_uri)
    if champion is None:
        return Reconciliation(None)
    findings: list[str] = []
    state = read_state(model_store)
    if state is None:
        state = _adopted(client, model_store, serving_name, findings)
    current = state.models.get(serving_name)
    if current is None:
        findings.append(f"the desired state lists no {serving_name} version")
    elif current.default != champion:
        findings.append(f"the desired state's {serving_name} default was v{current.default}, "
                        f"the registry's champion is v{champion}")
    state, rebuilt = _with_verified_archive(state, model_store, registered_model, champion, tracking_uri,
                                            serving_name, findings)
    state = _without_missing_archives(state, model_store, serving_name, findings)
    write_state(model_store, state)
    if rebuilt:
        _unregister_stale(client, serving_name, champion, findings)
    for name in sorted(state.models):
        findings += fleet.apply(client, state, name)
    findings += [f"removed archive {name}, which the desired state does not list"
                 for name in fleet.remove_stray_archives(model_store, state, serving_name)]
    return Reconciliation(champion, findings)


def _adopted(client: TorchServeClient, model_store: Path, serving_name: str, findings: list[str]) -> ServingState:
    """A store from before the desired state: the other models (b1, b2, eval) as TorchServe
    serves them now, from their archives in the store."""
    state = ServingState()
    for name in sorted(set(client.models()) - {serving_name}):
        default = client.default_version(name)
        archive = Path(model_store) / archive_name(name, default)
        if archive.is_file():
            state = state.serve_archive(name, default, archive, max(1, client.ready_workers(name, default)))
            findings.append(f"no desired state: adopted {name} v{default} as TorchServe serves it")
    return state


def _with_verified_archive(state: ServingState, model_store: Path, registered_model: str, version: str,
                           tracking_uri: str | None, serving_name: str, findings: list[str]) -> tuple[ServingState, bool]:
    """`state` serving `version` as the default from an archive matching the registry; True if
    the archive had to be rebuilt."""
    expected = registry.model_sha256(registered_model, version, tracking_uri)
    listed = state.models.get(serving_name)
    workers = listed.versions[listed.default].workers if listed else 1
    archive = Path(model_store) / archive_name(serving_name, version)
    try:
        found = model_sha256(archive) if archive.is_file() else None
    except StateError:
        found = "unreadable"
    rebuilt = found != expected
    if rebuilt:
        what = "missing" if found is None else f"not the registered model (sha256 {found[:12]}, registry {expected[:12]})"
        findings.append(f"the archive of {serving_name} v{version} was {what}; rebuilt it from the registry")
        with tempfile.TemporaryDirectory(prefix="ctloop-reconcile-") as folder:
            files = registry.download_version(registered_model, version, folder, tracking_uri)
            build_archive(files.model_file, serving_name, version, model_store, workers=workers)
    return state.serve(serving_name, version, ServedVersion(archive.name, expected, workers), default=True), rebuilt


def _without_missing_archives(state: ServingState, model_store: Path, serving_name: str,
                              findings: list[str]) -> ServingState:
    """Older versions whose archive is gone cannot come back at a restart: stop listing them."""
    model = state.model(serving_name)
    gone = [version for version, served in model.versions.items()
            if version != model.default and not (Path(model_store) / served.archive).is_file()]
    if gone:
        findings.append(f"the archives of {serving_name} {', '.join('v' + v for v in gone)} are missing; "
                        "they no longer serve")
    return state.without(serving_name, gone) if gone else state


def _unregister_stale(client: TorchServeClient, serving_name: str, version: str,
                      findings: list[str]) -> None:
    """A registered version whose archive was rebuilt runs the bytes it loaded before: unregister
    it so that `apply` registers it again from the rebuilt archive. A default is first moved to
    another registered version, if there is one, so the model keeps answering."""
    default, registered = fleet.served(client, serving_name)
    if version not in registered:
        return
    others = [other for other in registered if other != version]
    if default == version and others:
        client.set_default(serving_name, others[-1])
    client.unregister(serving_name, version)
    findings.append(f"unregistered {serving_name} v{version} to load it again from the rebuilt archive")
