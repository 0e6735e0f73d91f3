"""The MLflow model registry as ctloop uses it: TorchScript files, aliases, nothing pickled.

A registered version is a run artifact directory `model/` holding two files: `model.pt` (written
by `ctloop.modelfile.save_model`) and `train_set.npz` (the ImageSet it was trained on, so the next
cycle can merge it). The version's source is that directory, so downloading a version gives
exactly those bytes back. Aliases carry the roles: `challenger` (the latest trained model),
`champion` (the served one) and `previous-champion` (what to roll back to).

Every function takes `tracking_uri`, defaulting to MLFLOW_TRACKING_URI; SQLite URIs such as
`sqlite:////abs/mlflow.db` keep their artifacts in a directory next to the database. Failures of
the tracking server and missing versions or aliases are raised as RegistryError, naming the URI,
model, version or alias concerned. A URI may carry credentials (`http://user:password@host`):
every message names it, and quotes MLflow's own, through ctloop.redact, and a RegistryError does
not chain MLflow's exception (whose message quotes the URI in full); it keeps its error code.

Retries: MlflowClient's REST calls retry through urllib3 with numbers it reads from environment
variables at each call (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _BACKOFF_JITTER,
_TIMEOUT). Every registry call here (and every call a stage makes inside `registry_errors`) runs
with those that are not set given ctloop.http's numbers (3 retries, waits 0, 2, 4 s, 30 s
timeout) instead of MLflow's defaults (7 retries, about 4 minutes of waits, 120 s timeout).
They are set only while such a call runs and removed right after; a value the user set is
never touched, so MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 still means no retry. What MLflow retries
(which statuses, which methods) stays MLflow's choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SADeprecationWarning

from ctloop import http
from ctloop.redact import redact_text, redact_url

__all__ = [
    "AliasMovedError",
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS_CHAMPION",
    "IntegrityError",
    "ModelVersionFiles",
    "RegistryError",
    "client",
    "delete_version",
    "download_version",
    "ensure_experiment",
    "find_version_for_run",
    "get_version_by_alias",
    "log_model_files",
    "model_sha256",
    "promote",
    "promote_replacing",
    "prune_versions",
    "register_model_file",
    "registry_errors",
    "require_alias",
    "resolve_tracking_uri",
    "set_alias",
    "verify_file",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

MODEL_ARTIFACT_DIR = "model"
MODEL_FILENAME = "model.pt"
TRAIN_SET_FILENAME = "train_set.npz"
ARTIFACT_ROOT_NAME = "mlflow-artifacts"
RUN_ID_TAG = "ctloop.run_id"
SHA256_TAG = "ctloop.sha256"  # of model.pt: what a served archive's model file must match
TRAIN_SET_SHA256_TAG = "ctloop.train_set_sha256"  # of train_set.npz: what the next training may merge

_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(RuntimeError):
    """The registry is unreachable, or a model, version or alias asked for does not exist.

    error_code: MLflow's error code (e.g. "RESOURCE_DOES_NOT_EXIST") when MLflow raised, else "".
    """

    def __init__(self, message: str, error_code: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code


class IntegrityError(RegistryError):
    """A file's sha256 differs from the one recorded when its version was registered: the
    artifact (TorchScript is code) was replaced or damaged after training; nothing may use it."""


@dataclass(frozen=True)
class ModelVersionFiles:
    """A downloaded model version: its TorchScript file and the training set (None if absent)."""

    version: str
    model_file: Path
    train_set: Path | None


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """`tracking_uri`, else MLFLOW_TRACKING_URI; never MLflow's default (a db in the cwd)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise RegistryError(
            "no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI "
            "(e.g. sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000)"
        )
    return uri


def client(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for `tracking_uri` (default MLFLOW_TRACKING_URI), also used as registry."""
    uri = resolve_tracking_uri(tracking_uri)
    database = _sqlite_path(uri)
    if database is not None and not database.parent.is_dir():
        raise RegistryError(
            f"MLflow tracking URI {redact_url(uri)}: directory {database.parent} does not exist"
        )
    # The URI travels with the client, never through mlflow.set_tracking_uri: that sets a
    # process-wide default and writes MLFLOW_TRACKING_URI into os.environ.
    with _mlflow_sql_store_quiet(), registry_errors(uri, "open a client"):  # e.g. an unknown scheme
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str, tracking_uri: str | None = None) -> str:
    """The id of experiment `name`, created if missing (SQLite: artifacts next to the db)."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    with registry_errors(uri, f"get or create experiment {name!r}"):
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                mlflow_client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        database = _sqlite_path(uri)
        location = None
        if database is not None:
            location = (database.parent / ARTIFACT_ROOT_NAME).resolve().as_uri()
        return mlflow_client.create_experiment(name, artifact_location=location)


def register_model_file(
    model_name: str,
    model_file: str | Path,
    train_set: str | Path | None = None,
    run_id: str | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "ctloop",
) -> str:
    """Log `model_file` (+ `train_set`) to a run and register them as a new version of `model_name`.

    Args:
        model_name: Registered model name; created on first use.
        model_file: TorchScript file written by ctloop.modelfile.save_model.
        train_set: The ImageSet .npz the model was trained on, or None.
        run_id: Existing run to log into; None creates (and finishes) a run in `experiment`.
        alias: Alias to point at the new version (e.g. "challenger"), or None.
        tracking_uri: MLflow tracking URI; defaults to MLFLOW_TRACKING_URI.
        experiment: Experiment for a new run.

    Returns:
        The version number as a string. If `run_id` already produced a version of `model_name`
        (a re-run after a crash), that version is returned and nothing new is registered.
    """
    uri = resolve_tracking_uri(tracking_uri)
    model_file, train_set = Path(model_file), Path(train_set) if train_set is not None else None
    for path in (model_file, train_set):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"cannot register {model_name!r}: {path} does not exist")
    mlflow_client = client(uri)
    own_run = run_id is None
    if own_run:
        experiment_id = ensure_experiment(experiment, uri)
        with registry_errors(uri, f"create a run in experiment {experiment!r}"):
            run_id = mlflow_client.create_run(experiment_id).info.run_id
    assert run_id is not None
    existing = find_version_for_run(model_name, run_id, uri)
    if existing is not None:
        version = existing
    else:
        log_model_files(run_id, model_file, train_set, uri)
        digests = {SHA256_TAG: _sha256(model_file)}
        if train_set is not None:
            digests[TRAIN_SET_SHA256_TAG] = _sha256(train_set)
        version = _create_version(mlflow_client, uri, model_name, run_id, digests)
    if alias is not None:
        set_alias(model_name, alias, version, uri)
    if own_run:
        with registry_errors(uri, f"finish run {run_id}"):
            mlflow_client.set_terminated(run_id)
    return version


def log_model_files(
    run_id: str, model_file: Path, train_set: Path | None, tracking_uri: str | None = None
) -> None:
    """Upload the model (and training set) under the run's `model/` artifact directory."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    with tempfile.TemporaryDirectory(prefix="ctloop-register-") as staging:
        shutil.copyfile(model_file, Path(staging) / MODEL_FILENAME)
        if train_set is not None:
            shutil.copyfile(train_set, Path(staging) / TRAIN_SET_FILENAME)
        with registry_errors(uri, f"log model artifacts to run {run_id}"):
            mlflow_client.log_artifacts(run_id, staging, MODEL_ARTIFACT_DIR)


def find_version_for_run(
    model_name: str, run_id: str, tracking_uri: str | None = None
) -> str | None:
    """The version of `model_name` registered from `run_id`, or None (newest if several)."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    with registry_errors(uri, f"search versions of {model_name!r} from run {run_id}"):
        versions = mlflow_client.search_model_versions(
            f"name = '{_quote(model_name)}' and run_id = '{_quote(run_id)}'"
        )
    if not versions:
        return None
    return str(max(int(version.version) for version in versions))


def set_alias(model_name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    """Point `alias` of `model_name` at `version` (moving it if it pointed elsewhere)."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    _require_version(mlflow_client, uri, model_name, version)
    with registry_errors(uri, f"set alias {alias!r} of {model_name!r} to version {version}"):
        mlflow_client.set_registered_model_alias(model_name, alias, str(version))


def get_version_by_alias(
    model_name: str, alias: str, tracking_uri: str | None = None
) -> str | None:
    """The version `alias` points at, or None if the model or the alias does not exist."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    try:
        with registry_errors(uri, f"look up alias {alias!r} of {model_name!r}"):
            return str(mlflow_client.get_model_version_by_alias(model_name, alias).version)
    except RegistryError as error:
        if _is_not_found(error):
            return None
        raise


def require_alias(model_name: str, alias: str, tracking_uri: str | None = None) -> str:
    """Like get_version_by_alias, but a missing alias is a RegistryError naming it."""
    uri = resolve_tracking_uri(tracking_uri)
    version = get_version_by_alias(model_name, alias, uri)
    if version is None:
        raise RegistryError(
            f"model {model_name!r} has no alias {alias!r} in MLflow at {redact_url(uri)}; "
            f"register a version with that alias first"
        )
    return version


def download_version(
    model_name: str, version: str, dest_dir: str | Path, tracking_uri: str | None = None
) -> ModelVersionFiles:
    """Download `version` of `model_name` into `dest_dir`, each file checked against the sha256
    recorded at registration (versions registered before a tag existed are not checked for it).

    Raises:
        IntegrityError: a downloaded file is not the one registered.
    """
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    model_version = _require_version(mlflow_client, uri, model_name, version)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with registry_errors(uri, f"download version {version} of {model_name!r}"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_version.source, dst_path=str(dest_dir), tracking_uri=uri
        )
    local_dir = Path(local)
    model_file = local_dir / MODEL_FILENAME
    if not model_file.is_file():
        raise RegistryError(
            f"version {version} of {model_name!r} in MLflow at {redact_url(uri)} has no {MODEL_FILENAME} "
            f"(source {model_version.source}); was it registered by ctloop?"
        )
    train_set = local_dir / TRAIN_SET_FILENAME
    tags = model_version.tags or {}
    for path, tag in ((model_file, SHA256_TAG), (train_set, TRAIN_SET_SHA256_TAG)):
        if tag in tags:
            verify_file(path, tags[tag], model_name, version)
    return ModelVersionFiles(str(version), model_file, train_set if train_set.is_file() else None)


def verify_file(path: Path, expected: str, model_name: str, version: str) -> None:
    """Raise IntegrityError unless `path` exists and has the sha256 `expected`."""
    found = _sha256(path) if path.is_file() else "no file"
    if found != expected:
        raise IntegrityError(
            f"{path.name} of {model_name!r} version {version} has sha256 {found[:16]}, but {expected[:16]} was "
            "recorded when it was registered: the artifact was replaced or damaged after training; refusing to use it"
        )


class AliasMovedError(RegistryError):
    """The `champion` alias no longer names the version a caller expected to replace."""


def promote(model_name: str, version: str, tracking_uri: str | None = None) -> str | None:
    """Make `version` the champion; the old champion becomes `previous-champion`.

    Returns:
        The previous champion's version, or None if there was none (or it was `version`).
    """
    uri = resolve_tracking_uri(tracking_uri)
    old = get_version_by_alias(model_name, CHAMPION, uri)
    version = str(version)
    if old == version:
        return None
    if old is not None:
        set_alias(model_name, PREVIOUS_CHAMPION, old, uri)
    set_alias(model_name, CHAMPION, version, uri)
    return old


def promote_replacing(model_name: str, version: str, replacing: str | None,
                      tracking_uri: str | None = None) -> str | None:
    """`promote`, as a compare-and-set: only if `champion` still names `replacing` (None: no
    champion yet), else AliasMovedError and nothing changes.

    MLflow has no conditional alias update, so the check is atomic only among callers that hold
    the serving lock (serving.fleet.serving_lock), as every ctloop deploy does.
    """
    uri = resolve_tracking_uri(tracking_uri)
    current = get_version_by_alias(model_name, CHAMPION, uri)
    if current != replacing:
        raise AliasMovedError(f"the {CHAMPION} alias of {model_name!r} names version {current}, not "
                              f"{replacing}: another deploy moved it")
    return promote(model_name, version, uri)


def model_sha256(model_name: str, version: str, tracking_uri: str | None = None) -> str:
    """sha256 of the version's model.pt: its tag, or (versions registered before the tag) the
    downloaded file's."""
    uri = resolve_tracking_uri(tracking_uri)
    model_version = _require_version(client(uri), uri, model_name, version)
    tagged = (model_version.tags or {}).get(SHA256_TAG)
    if tagged:
        return tagged
    with tempfile.TemporaryDirectory(prefix="ctloop-sha-") as folder:
        return _sha256(download_version(model_name, version, folder, uri).model_file)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def delete_version(model_name: str, version: str, tracking_uri: str | None = None) -> None:
    """Delete a version; refuses the champion, whose deletion would leave serving without one."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    model_version = _require_version(mlflow_client, uri, model_name, version)
    if CHAMPION in (model_version.aliases or []):
        raise RegistryError(
            f"version {version} of {model_name!r} is the {CHAMPION}; promote another version "
            f"before deleting it"
        )
    with registry_errors(uri, f"delete version {version} of {model_name!r}"):
        mlflow_client.delete_model_version(model_name, str(version))


def prune_versions(model_name: str, keep: int, tracking_uri: str | None = None, delete_runs: bool = False) -> list[str]:
    """Delete the oldest unaliased versions beyond the newest `keep`; returns those deleted.

    delete_runs: also delete the runs that logged them (unless a kept version came from the same
    run). MLflow only marks runs deleted; `mlflow gc` removes them and their artifacts for good."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    with registry_errors(uri, f"list versions of {model_name!r}"):
        versions = mlflow_client.search_model_versions(f"name = '{_quote(model_name)}'")
        # search results carry no aliases; the registered model maps alias -> version
        aliases = mlflow_client.get_registered_model(model_name).aliases
    aliased = {str(version) for version in aliases.values()}
    newest_first = sorted((str(item.version) for item in versions), key=int, reverse=True)
    runs = {str(item.version): item.run_id for item in versions}
    deleted = [version for version in newest_first[keep:] if version not in aliased]
    for version in deleted:
        delete_version(model_name, version, uri)
    if delete_runs:
        kept_runs = {runs[version] for version in runs if version not in deleted}
        for run_id in {runs[version] for version in deleted if runs[version]} - kept_runs:
            with registry_errors(uri, f"delete run {run_id}"):
                mlflow_client.delete_run(run_id)
    return deleted


def _create_version(mlflow_client: MlflowClient, uri: str, model_name: str, run_id: str,
                    digests: dict[str, str]) -> str:
    with registry_errors(uri, f"register a version of {model_name!r} from run {run_id}"):
        try:
            mlflow_client.create_registered_model(model_name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
        model_version = mlflow_client.create_model_version(
            model_name,
            source=f"{artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}",
            run_id=run_id,
            tags={RUN_ID_TAG: run_id, **digests},
        )
    return str(model_version.version)


def _require_version(
    mlflow_client: MlflowClient, uri: str, model_name: str, version: str
) -> ModelVersion:
    try:
        with registry_errors(uri, f"get version {version} of {model_name!r}"):
            return mlflow_client.get_model_version(model_name, str(version))
    except RegistryError as error:
        if _is_not_found(error):
            raise RegistryError(
                f"model {model_name!r} has no version {version} in MLflow at {redact_url(uri)}", error.error_code
            ) from None
        raise


@contextlib.contextmanager
def registry_errors(uri: str, action: str) -> Iterator[None]:
    """Turn MLflow and connection failures into a RegistryError naming the URI and the action.
    MLflow's HTTP calls inside follow ctloop.http's retry numbers (see the module docstring).

    The URI and MLflow's message are redacted, and MLflow's exception is not chained (`from
    None`): a traceback prints every chained message, and MLflow's quotes the URI in full."""
    shown = redact_url(uri)
    try:
        with _http_policy():
            yield
    except MlflowException as error:
        detail = redact_text(error.message)
        if _is_connection_failure(error):
            raise RegistryError(
                f"cannot reach the MLflow tracking server at {shown} to {action}; is it running? "
                f"(check MLFLOW_TRACKING_URI): {detail}", error.error_code
            ) from None
        raise RegistryError(f"MLflow at {shown}: cannot {action}: {detail}", error.error_code) from None
    except OSError as error:
        raise RegistryError(f"MLflow at {shown}: cannot {action}: {redact_text(str(error))}") from None


_policy_lock = threading.Lock()
_policy_users = 0
_policy_set: list[str] = []


@contextlib.contextmanager
def _http_policy() -> Iterator[None]:
    """While at least one registry call runs (in any thread), the MLFLOW_HTTP_REQUEST_* variables
    the user did not set hold ctloop.http's numbers; the last call to end removes them again."""
    global _policy_users
    with _policy_lock:
        if _policy_users == 0:
            for name, value in http.mlflow_environment().items():
                if name not in os.environ:
                    os.environ[name] = value
                    _policy_set.append(name)
        _policy_users += 1
    try:
        yield
    finally:
        with _policy_lock:
            _policy_users -= 1
            if _policy_users == 0:
                for name in _policy_set:
                    os.environ.pop(name, None)
                _policy_set.clear()


def _is_not_found(error: RegistryError) -> bool:
    return error.error_code in _NOT_FOUND


def _is_connection_failure(error: MlflowException) -> bool:
    cause = error.__cause__ or error.__context__
    return isinstance(cause, requests.exceptions.RequestException) or "Max retries exceeded" in str(
        error.message
    )


def _sqlite_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    path = unquote(parsed.path)
    if not path or path == "/:memory:":
        return None
    # sqlite:////abs/db -> path "//abs/db"; sqlite:///rel.db -> "/rel.db" (relative to the cwd)
    return Path(path[1:]).resolve()


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def import_sql_stores() -> None:
    """Import MLflow's SQL stores now, as opening the first client would (0.7 s with alembic): for
    a process that forks workers, so that none of them pays it."""
    with _mlflow_sql_store_quiet():
        pass


@contextlib.contextmanager
def _mlflow_sql_store_quiet() -> Iterator[None]:
    """MLflow 3.17's SQL models declare lazy="noload" relationships, which SQLAlchemy 2.1
    deprecates; SQLAlchemy warns once, when MLflow configures its mappers on importing the SQL
    stores. Import them here, with only that warning silenced, before any client touches them."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"The ``noload`` loader strategy is deprecated",
            category=SADeprecationWarning,
        )
        import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        yield
