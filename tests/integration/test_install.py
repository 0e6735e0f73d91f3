"""`ctloop install` (ctloop_app.install) on a session bootstrap, against MLflow on SQLite and
temporary model-store and golden-set paths: what it registers, writes and copies, twice."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from ctloop import registry
from ctloop_app.cli import main
from ctloop_app.install import INSTALL_EXPERIMENT, REGISTERED_MODEL, install
from pipeline_support import new_registry


@pytest.fixture()
def bootstrap_dir(boot) -> Path:
    """The `ctloop bootstrap --out` folder the session's `boot` fixture wrote."""
    root = boot.train_set.parents[1]
    assert boot.model_files["champion"] == root / "models" / "champion.pt"
    return root


@pytest.fixture()
def tracking_uri(tmp_path: Path, mlflow_schema: Path) -> str:
    return new_registry(tmp_path / "mlflow", mlflow_schema)


def versions(uri: str) -> list[str]:
    return sorted(str(v.version) for v in registry.client(uri).search_model_versions(f"name = '{REGISTERED_MODEL}'"))


def run_install(bootstrap_dir: Path, uri: str, store: Path, golden: Path | str) -> int:
    return main(["install", "--models", str(bootstrap_dir), "--tracking-uri", uri, "--model-store", str(store),
                 "--golden-set", str(golden)])


def test_install_twice_registers_archives_and_uploads_once(bootstrap_dir: Path, boot, tracking_uri: str,
                                                           tmp_path: Path, capsys) -> None:
    store, golden = tmp_path / "model-store", tmp_path / "artifacts" / "ctloop" / "golden.npz"
    assert run_install(bootstrap_dir, tracking_uri, store, golden) == 0
    first = capsys.readouterr().out
    assert "version 1 of ctloop-champion (registered); alias champion -> version 1" in first

    assert versions(tracking_uri) == ["1"]
    assert registry.get_version_by_alias(REGISTERED_MODEL, registry.CHAMPION, tracking_uri) == "1"
    files = registry.download_version(REGISTERED_MODEL, "1", tmp_path / "download", tracking_uri)
    assert files.model_file.read_bytes() == boot.model_files["champion"].read_bytes()
    assert files.train_set is not None and files.train_set.read_bytes() == boot.train_set.read_bytes()
    archives = sorted(path.name for path in store.glob("*.mar"))
    assert archives == ["b1-v1.mar", "b2-v1.mar", "champion-v1.mar"]
    with zipfile.ZipFile(store / "champion-v1.mar") as mar:
        assert mar.read("model.pt") == boot.model_files["champion"].read_bytes()
    assert golden.read_bytes() == boot.golden_set.read_bytes()
    stamps = {path: path.stat().st_mtime_ns for path in [*store.glob("*.mar"), golden]}

    assert run_install(bootstrap_dir, tracking_uri, store, golden) == 0
    second = capsys.readouterr().out
    assert "(already registered)" in second and "archive written" not in second
    assert "golden set unchanged" in second
    assert versions(tracking_uri) == ["1"], "a second install registers nothing"
    experiment = registry.client(tracking_uri).get_experiment_by_name(INSTALL_EXPERIMENT)
    assert len(registry.client(tracking_uri).search_runs([experiment.experiment_id])) == 1
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps, "nothing rewritten"


def test_install_after_retraining_keeps_the_new_champion(bootstrap_dir: Path, boot, tracking_uri: str,
                                                         tmp_path: Path) -> None:
    store = tmp_path / "model-store"
    install(bootstrap_dir, tracking_uri, store, None)
    retrained = registry.register_model_file(REGISTERED_MODEL, boot.model_files["b1"], boot.train_set,
                                             tracking_uri=tracking_uri)
    registry.promote(REGISTERED_MODEL, retrained, tracking_uri)
    (store / "champion-v1.mar").unlink()  # the deploy stage keeps only the newest versions

    again = install(bootstrap_dir, tracking_uri, store, None)
    assert not again.registered and again.champion_version == "1" and again.champion_alias == retrained
    assert registry.get_version_by_alias(REGISTERED_MODEL, registry.CHAMPION, tracking_uri) == retrained
    assert not (store / "champion-v1.mar").exists(), "an old champion is not put back for TorchServe to load"
    assert versions(tracking_uri) == ["1", retrained]


def test_install_names_what_is_missing(tmp_path: Path, tracking_uri: str, bootstrap_dir: Path, capsys) -> None:
    (tmp_path / "half" / "models").mkdir(parents=True)
    code = run_install(tmp_path / "half", tracking_uri, tmp_path / "store", tmp_path / "golden.npz")
    err = capsys.readouterr().err
    assert code == 2 and "is not a `ctloop bootstrap --out` folder: missing" in err and "champion.pt" in err
    code = run_install(bootstrap_dir, tracking_uri, tmp_path / "store", "minio://mlpipeline/ctloop/golden.npz")
    assert code == 2 and "takes a file path" in capsys.readouterr().err
    assert versions(tracking_uri) == []
