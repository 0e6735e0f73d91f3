"""Seed a new cluster with a bootstrap (`ctloop install`, what the k8s/jobs/install Job runs).

From a `ctloop bootstrap --out DIR` folder (`models/{champion,b1,b2}.pt`, `data/train.npz`,
`data/golden.npz`) it
1. registers the champion in MLflow, with its training set, and points the alias `champion` at it
   (when the model has no champion yet);
2. writes the archives TorchServe loads at start into the model store: `champion-v<version>.mar`
   (while that version is the champion), `b1-v1.mar`, `b2-v1.mar`, and lists them in the store's
   desired state (serving.state), which TorchServe reads at start;
3. copies the golden set to where the pipeline's importer reads it (the Job uploads that file to
   KFP's artifact store).

Running it again changes nothing: the registration is keyed by the champion file's SHA-256 (a run
tagged with it registers at most one version), existing archives are kept, and the golden set is
rewritten only when its bytes differ. A retrained champion is never demoted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ctloop import registry
from serving.archive import archive_name, build_archive
from serving.state import ServingState, read_state, write_state

REGISTERED_MODEL = "ctloop-champion"
BRANCH_VERSION = "1"
INSTALL_EXPERIMENT = "ctloop-install"
DIGEST_TAG = "ctloop.bootstrap_sha256"
ROLES = ("champion", "b1", "b2")


class InstallError(ValueError):
    """The bootstrap folder or a target is not what `ctloop install` needs."""


@dataclass(frozen=True)
class BootstrapFiles:
    model_files: dict[str, Path]
    train_set: Path
    golden_set: Path


@dataclass(frozen=True)
class InstallResult:
    champion_version: str
    registered: bool  # False: an earlier install had registered this champion file
    champion_alias: str  # the version `champion` points at afterwards
    archives_written: list[Path] = field(default_factory=list)
    archives_kept: list[Path] = field(default_factory=list)
    golden_set: Path | None = None
    golden_set_written: bool = False

    def summary(self) -> str:
        lines = [f"champion: version {self.champion_version} of {REGISTERED_MODEL} "
                 f"({'registered' if self.registered else 'already registered'}); "
                 f"alias champion -> version {self.champion_alias}"]
        lines += [f"archive written: {path}" for path in self.archives_written]
        lines += [f"archive kept: {path}" for path in self.archives_kept]
        if self.golden_set is not None:
            lines.append(f"golden set {'written to' if self.golden_set_written else 'unchanged at'} {self.golden_set}")
        return "\n".join(lines)


def bootstrap_files(models_dir: str | Path) -> BootstrapFiles:
    """The files of a `ctloop bootstrap --out` folder; an InstallError names what is missing."""
    root = Path(models_dir)
    files = BootstrapFiles({role: root / "models" / f"{role}.pt" for role in ROLES},
                           root / "data" / "train.npz", root / "data" / "golden.npz")
    missing = [str(path) for path in (*files.model_files.values(), files.train_set, files.golden_set)
               if not path.is_file()]
    if missing:
        raise InstallError(f"{root} is not a `ctloop bootstrap --out` folder: missing {', '.join(missing)}")
    return files


def install(
    models_dir: str | Path,
    tracking_uri: str,
    model_store: str | Path,
    golden_set: str | Path | None,
    registered_model: str = REGISTERED_MODEL,
    workers: int = 1,
) -> InstallResult:
    """Register, archive and place a bootstrap's models and golden set (see the module docstring).

    Args:
        models_dir: a `ctloop bootstrap --out` folder.
        tracking_uri: MLflow (http://mlflow:5000 in the cluster, or sqlite:////abs/mlflow.db).
        model_store: TorchServe's model store directory.
        golden_set: where to put the golden set (a file path), or None to leave it out.
        registered_model: the MLflow model the pipeline's `registered_model` parameter names.
        workers: workers per model in the archives' model config.
    """
    files = bootstrap_files(models_dir)
    if golden_set is not None and re.match(r"[a-z][a-z0-9+.-]+:/", str(golden_set)):
        raise InstallError(f"--golden-set takes a file path, got {golden_set}; the install Job uploads that file "
                           "to the artifact store (k8s/jobs/install)")
    uri = registry.resolve_tracking_uri(tracking_uri)
    version, registered = _register_once(files, uri, registered_model)
    alias = registry.get_version_by_alias(registered_model, registry.CHAMPION, uri)
    if alias is None:
        registry.set_alias(registered_model, registry.CHAMPION, version, uri)
        alias = version

    written: list[Path] = []
    kept: list[Path] = []
    store = Path(model_store)
    wanted = [("b1", BRANCH_VERSION), ("b2", BRANCH_VERSION)]
    if alias == version:  # a retrained champion's archive is the deploy stage's, not ours
        wanted.insert(0, ("champion", version))
    for role, role_version in wanted:
        target = store / archive_name(role, role_version)
        if target.is_file():
            kept.append(target)
        else:
            written.append(build_archive(files.model_files[role], role, role_version, store, workers=workers))
    _declare(store, wanted, workers)

    golden_written = False
    if golden_set is not None:
        golden_written = _copy_if_changed(files.golden_set, Path(golden_set))
    return InstallResult(version, registered, alias, written, kept,
                         Path(golden_set) if golden_set is not None else None, golden_written)


def _declare(store: Path, served: list[tuple[str, str]], workers: int) -> None:
    """Add the models the desired state does not list yet (serving.state), which TorchServe
    then serves at start; models it lists (a retrained champion) are the deploy stage's."""
    state = read_state(store) or ServingState()
    for role, version in served:
        if role not in state.models:
            state = state.serve_archive(role, version, store / archive_name(role, version), workers)
    write_state(store, state)


def _register_once(files: BootstrapFiles, uri: str, model_name: str) -> tuple[str, bool]:
    """The champion's version: the one a run tagged with the file's digest registered, else a new one."""
    digest = hashlib.sha256(files.model_files["champion"].read_bytes()).hexdigest()
    client = registry.client(uri)
    experiment_id = registry.ensure_experiment(INSTALL_EXPERIMENT, uri)
    with registry.registry_errors(uri, f"look for an install of champion {digest[:12]}"):
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{DIGEST_TAG}` = '{digest}'",
                                  order_by=["attributes.start_time ASC"], max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        existing = registry.find_version_for_run(model_name, run_id, uri)
        if existing is not None:
            return existing, False
    else:
        with registry.registry_errors(uri, "create the install run"):
            run_id = client.create_run(experiment_id, tags={DIGEST_TAG: digest,
                                                            "mlflow.runName": f"install-{digest[:12]}"}).info.run_id
    # A run that crashed before registering is reused: register_model_file registers once per run.
    version = registry.register_model_file(model_name, files.model_files["champion"], files.train_set,
                                           run_id=run_id, tracking_uri=uri)
    with registry.registry_errors(uri, f"finish run {run_id}"):
        client.set_terminated(run_id)
    return version, True


def _copy_if_changed(source: Path, target: Path) -> bool:
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as data, tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                                                delete=False) as staging:
        shutil.copyfileobj(data, staging)
    os.replace(staging.name, target)
    return True
