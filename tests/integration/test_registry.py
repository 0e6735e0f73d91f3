"""ctloop.registry against a real MLflow on SQLite in a temporary directory (no mocks)."""

from __future__ import annotations

import os
import time
from typing import Iterator
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from ctloop import http, registry
from ctloop.images import ImageSet
from ctloop_app.cycle import prune_registry
from ctloop_app.mlflow_server import MlflowServer
from ctloop_app.operate import Fleet
from ctloop.modelfile import ModelCard, load_model, save_model
from ctloop.models import build_model
from ctloop.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, RegistryError
from ctloop.process import free_port


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite registry per module (creating its tables takes a second); tests use own names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An (untrained) champion model file and a small training set, as the train stage writes."""
    directory = tmp_path_factory.mktemp("model")
    classes = ("a", "b", "c")
    rng = np.random.default_rng(0)
    train = ImageSet(
        rng.random((12, 8, 8), dtype=np.float32), np.arange(12, dtype=np.int64) % 3, classes
    )
    train.save(directory / "train.npz")
    save_model(
        build_model("champion", 3, (8, 8)), ModelCard("champion", classes, (8, 8), "ResidualCNN"),
        directory / "model.pt",
    )
    return directory / "model.pt", directory / "train.npz"


def test_public_names() -> None:
    assert set(registry.__all__) == {
        "AliasMovedError", "CHALLENGER", "CHAMPION", "PREVIOUS_CHAMPION", "IntegrityError", "ModelVersionFiles",
        "RegistryError", "verify_file",
        "client", "delete_version", "download_version", "ensure_experiment",
        "find_version_for_run", "get_version_by_alias", "log_model_files", "model_sha256", "promote",
        "promote_replacing",
        "prune_versions", "register_model_file", "registry_errors", "require_alias",
        "resolve_tracking_uri", "set_alias",
    }


def test_register_then_download_gives_the_same_bytes(
    tracking_uri: str, model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_file, train_set = model_files
    version = registry.register_model_file(
        "download", model_file, train_set, alias=CHALLENGER, tracking_uri=tracking_uri
    )
    assert version == "1"
    assert registry.get_version_by_alias("download", CHALLENGER, tracking_uri) == "1"

    files = registry.download_version("download", version, tmp_path / "out", tracking_uri)
    assert files.version == "1"
    assert files.model_file.read_bytes() == model_file.read_bytes()
    assert files.train_set is not None
    assert files.train_set.read_bytes() == train_set.read_bytes()
    _, card = load_model(files.model_file)
    assert card.class_names == ("a", "b", "c")


@pytest.mark.parametrize("replaced", [registry.MODEL_FILENAME, registry.TRAIN_SET_FILENAME])
def test_an_artifact_replaced_after_registration_is_refused(
    tracking_uri: str, model_files: tuple[Path, Path], tmp_path: Path, replaced: str
) -> None:
    """Anyone who can write MLflow's artifact store could swap model.pt (TorchScript is code) or
    the training set; the sha256 tags recorded at registration catch it at every download."""
    model_file, train_set = model_files
    name = f"swapped-{replaced.split('.')[0]}"
    version = registry.register_model_file(name, model_file, train_set, tracking_uri=tracking_uri)
    source = registry.client(tracking_uri).get_model_version(name, version).source
    stored = Path(urllib.parse.urlparse(source).path if source.startswith("file:") else source) / replaced
    stored.write_bytes(stored.read_bytes() + b"tampered")
    with pytest.raises(registry.IntegrityError, match=rf"^{replaced} of '{name}' version {version} has sha256 "
                                                      r"\w{16}, but \w{16} was recorded when it was registered"):
        registry.download_version(name, version, tmp_path / "out", tracking_uri)


def test_register_without_train_set(
    tracking_uri: str, model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    version = registry.register_model_file("no-data", model_files[0], tracking_uri=tracking_uri)
    files = registry.download_version("no-data", version, tmp_path, tracking_uri)
    assert files.train_set is None
    assert files.model_file.read_bytes() == model_files[0].read_bytes()


def test_promote_keeps_the_previous_champion(
    tracking_uri: str, model_files: tuple[Path, Path]
) -> None:
    name = "promote"
    versions = [
        registry.register_model_file(name, model_files[0], tracking_uri=tracking_uri)
        for _ in range(3)
    ]
    assert versions == ["1", "2", "3"]

    assert registry.promote(name, "1", tracking_uri) is None
    assert registry.get_version_by_alias(name, CHAMPION, tracking_uri) == "1"
    assert registry.get_version_by_alias(name, PREVIOUS_CHAMPION, tracking_uri) is None

    assert registry.promote(name, "2", tracking_uri) == "1"
    assert registry.get_version_by_alias(name, CHAMPION, tracking_uri) == "2"
    assert registry.get_version_by_alias(name, PREVIOUS_CHAMPION, tracking_uri) == "1"

    assert registry.promote(name, "2", tracking_uri) is None  # already champion: nothing moves
    assert registry.get_version_by_alias(name, PREVIOUS_CHAMPION, tracking_uri) == "1"

    assert registry.promote(name, "3", tracking_uri) == "2"
    assert registry.get_version_by_alias(name, CHAMPION, tracking_uri) == "3"
    assert registry.get_version_by_alias(name, PREVIOUS_CHAMPION, tracking_uri) == "2"


def test_set_alias_moves_it(tracking_uri: str, model_files: tuple[Path, Path]) -> None:
    first = registry.register_model_file("move", model_files[0], alias=CHALLENGER,
                                         tracking_uri=tracking_uri)
    second = registry.register_model_file("move", model_files[0], alias=CHALLENGER,
                                          tracking_uri=tracking_uri)
    assert registry.get_version_by_alias("move", CHALLENGER, tracking_uri) == second
    registry.set_alias("move", CHALLENGER, first, tracking_uri)
    assert registry.get_version_by_alias("move", CHALLENGER, tracking_uri) == first


def test_missing_alias(tracking_uri: str, model_files: tuple[Path, Path]) -> None:
    registry.register_model_file("aliases", model_files[0], tracking_uri=tracking_uri)
    assert registry.get_version_by_alias("aliases", CHAMPION, tracking_uri) is None
    assert registry.get_version_by_alias("no-such-model", CHAMPION, tracking_uri) is None
    with pytest.raises(RegistryError, match="model 'aliases' has no alias 'champion' in MLflow at"):
        registry.require_alias("aliases", CHAMPION, tracking_uri)


def test_missing_version(tracking_uri: str, model_files: tuple[Path, Path], tmp_path: Path) -> None:
    registry.register_model_file("versions", model_files[0], tracking_uri=tracking_uri)
    message = "model 'versions' has no version 7 in MLflow at sqlite:"
    with pytest.raises(RegistryError, match=message):
        registry.download_version("versions", "7", tmp_path, tracking_uri)
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.set_alias("versions", CHAMPION, "7", tracking_uri)


def test_same_run_registers_once(tracking_uri: str, model_files: tuple[Path, Path]) -> None:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(registry.ensure_experiment("ctloop", tracking_uri)).info.run_id
    first = registry.register_model_file("rerun", model_files[0], model_files[1], run_id=run_id,
                                         tracking_uri=tracking_uri)
    again = registry.register_model_file("rerun", model_files[0], model_files[1], run_id=run_id,
                                         alias=CHALLENGER, tracking_uri=tracking_uri)
    assert again == first
    assert len(client.search_model_versions("name = 'rerun'")) == 1
    assert registry.find_version_for_run("rerun", run_id, tracking_uri) == first
    assert registry.get_version_by_alias("rerun", CHALLENGER, tracking_uri) == first
    assert client.get_run(run_id).info.status == "RUNNING"  # a run passed in is not closed


def test_delete_and_prune(tracking_uri: str, model_files: tuple[Path, Path]) -> None:
    name = "prune"
    for _ in range(5):
        registry.register_model_file(name, model_files[0], tracking_uri=tracking_uri)
    registry.promote(name, "1", tracking_uri)
    with pytest.raises(RegistryError, match="version 1 of 'prune' is the champion"):
        registry.delete_version(name, "1", tracking_uri)

    runs = {str(version.version): version.run_id
            for version in MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'")}
    assert registry.prune_versions(name, keep=2, tracking_uri=tracking_uri, delete_runs=True) == ["3", "2"]
    remaining = MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'")
    assert sorted(str(version.version) for version in remaining) == ["1", "4", "5"]
    stages = {version: MlflowClient(tracking_uri).get_run(run_id).info.lifecycle_stage
              for version, run_id in runs.items()}
    assert stages == {"1": "active", "2": "deleted", "3": "deleted", "4": "active", "5": "active"}

    registry.delete_version(name, "4", tracking_uri)
    with pytest.raises(RegistryError, match="has no version 4"):
        registry.delete_version(name, "4", tracking_uri)


def test_tracking_uri_defaults_to_the_environment(
    tmp_path: Path, model_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    version = registry.register_model_file("from-env", model_files[0], model_files[1],
                                           alias=CHALLENGER)
    assert registry.get_version_by_alias("from-env", CHALLENGER, uri) == version
    assert list(work.iterdir()) == []  # nothing in the cwd: artifacts live next to the db
    assert (tmp_path / "mlflow-artifacts").is_dir()


def test_no_tracking_uri_is_an_error() -> None:
    with pytest.raises(RegistryError, match="pass tracking_uri or set MLFLOW_TRACKING_URI"):
        registry.get_version_by_alias("any", CHAMPION)


def test_sqlite_in_a_missing_directory(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    with pytest.raises(RegistryError, match=f"directory {tmp_path / 'absent'} does not exist"):
        registry.ensure_experiment("ctloop", uri)


def test_missing_model_file(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        registry.register_model_file("x", tmp_path / "nope.pt", tracking_uri=tracking_uri)


def test_unreachable_server_fails_fast(
    model_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {uri}"):
        registry.register_model_file("down", model_files[0], tracking_uri=uri)
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {uri}"):
        registry.get_version_by_alias("down", CHAMPION, uri)
    assert time.monotonic() - started < 10


def test_mlflow_reads_the_retry_policy_s_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import environment_variables as settings

    for name, value in http.mlflow_environment().items():
        monkeypatch.setenv(name, value)
    assert settings.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == http.RETRIES
    assert settings.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == http.BACKOFF
    assert settings.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get() == http.BACKOFF_JITTER
    assert settings.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == http.TIMEOUT


@pytest.mark.slow
def test_unreachable_server_is_retried_by_the_policy_then_the_environment_is_restored() -> None:
    """No MLFLOW_HTTP_* set: the policy's 3 retries (waits 0, 2, 4 s), not MLflow's 7 (minutes)."""
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {uri}"):
        registry.get_version_by_alias("down", CHAMPION, uri)
    assert 6 <= time.monotonic() - started < 15
    assert not [name for name in os.environ if name.startswith("MLFLOW_HTTP_")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on loopback: SQLite backend, proxied artifact store."""
    with MlflowServer(tmp_path_factory.mktemp("server")) as server:
        yield server


@pytest.fixture
def mlflow_server(served: MlflowServer) -> str:
    return served.tracking_uri


@pytest.mark.slow
def test_against_a_real_tracking_server(
    mlflow_server: str, model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_file, train_set = model_files
    first = registry.register_model_file("served", model_file, train_set, alias=CHALLENGER,
                                         tracking_uri=mlflow_server)
    second = registry.register_model_file("served", model_file, train_set, alias=CHALLENGER,
                                          tracking_uri=mlflow_server)
    registry.promote("served", first, mlflow_server)
    assert registry.promote("served", second, mlflow_server) == first
    assert registry.require_alias("served", PREVIOUS_CHAMPION, mlflow_server) == first
    files = registry.download_version("served", second, tmp_path, mlflow_server)
    assert files.model_file.read_bytes() == model_file.read_bytes()
    assert files.train_set is not None and files.train_set.read_bytes() == train_set.read_bytes()


@pytest.mark.slow
def test_pruning_a_service_registry_removes_old_versions_runs_and_artifacts_for_good(
        served: MlflowServer, model_files: tuple[Path, Path]) -> None:
    """What `ctloop cycle` does after each run: the artifacts of the pruned versions' runs are
    gone from the server's artifact store, the kept ones' (and the champion's) stay."""
    model_file, train_set = model_files
    uri = served.tracking_uri
    versions = [registry.register_model_file("pruned", model_file, train_set, tracking_uri=uri) for _ in range(4)]
    registry.promote("pruned", versions[0], uri)
    runs = {version.version: version.run_id for version in MlflowClient(uri).search_model_versions("name='pruned'")}
    artifacts = served.work_dir / "artifacts"

    def stored(run_id: str) -> bool:
        return any(run_id in str(path) for path in artifacts.rglob("*.pt"))

    assert all(stored(run_id) for run_id in runs.values())
    fleet = Fleet(served.work_dir, "http://unused", "http://unused", uri, "pruned")
    assert prune_registry(fleet, served.work_dir / "mlflow.db", keep=2) == ["2"]
    assert [stored(runs[version]) for version in ("1", "2", "3", "4")] == [True, False, True, True]
    assert prune_registry(fleet, served.work_dir / "mlflow.db", keep=2) == []  # nothing more to do
