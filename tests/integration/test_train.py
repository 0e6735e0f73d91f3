"""The train stage against a real MLflow on SQLite: a few hundred digits, two epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from components.train.logic import TrainResult, train_challenger
from ctloop import registry
from ctloop.images import ImageSet
from ctloop.modelfile import load_model
from ctloop.registry import CHALLENGER, RegistryError

EPOCHS = 2


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 training digits and 100 holdout digits, as .npz image sets."""
    digits = load_digits()
    classes = tuple(str(name) for name in digits.target_names)
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    directory = tmp_path_factory.mktemp("data")
    ImageSet(images[:300], labels[:300], classes).save(directory / "train.npz")
    ImageSet(images[300:400], labels[300:400], classes).save(directory / "holdout.npz")
    return directory / "train.npz", directory / "holdout.npz"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite registry for the module; each test registers under its own model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _train(data_sets: tuple[Path, Path], uri: str, name: str, out: Path) -> TrainResult:
    train_set, holdout_set = data_sets
    return train_challenger(
        train_set, holdout_set, epochs=EPOCHS, seed=0, tracking_uri=uri, model_name=name,
        out_model=out,
    )


def test_trains_logs_and_registers_the_challenger(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path
) -> None:
    result = _train(data_sets, tracking_uri, "digits", tmp_path / "challenger.pt")

    assert result.version == "1"
    assert not result.reused
    assert registry.get_version_by_alias("digits", CHALLENGER, tracking_uri) == "1"
    _, card = load_model(result.model_file)
    assert card.role == "champion"
    assert card.class_names == tuple(str(digit) for digit in range(10))
    assert card.image_size == (8, 8)
    assert 0.0 < card.atc_threshold < 1.0  # fitted on the holdout, for the monitor's estimate
    assert set(result.metrics) == {"loss", "train_accuracy", "val_accuracy", "train_seconds", "epochs_run"}
    assert 0.0 <= result.metrics["val_accuracy"] <= 1.0

    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["epochs"], params["seed"], params["train_size"], params["holdout_size"]) == (
        "2", "0", "300", "100"
    )
    assert json.loads(params["class_names"]) == [str(digit) for digit in range(10)]
    for metric in ("loss", "train_accuracy", "val_accuracy"):
        history = client.get_metric_history(result.run_id, metric)
        assert [point.step for point in history] == [1, 2]

    files = registry.download_version("digits", result.version, tmp_path / "dl", tracking_uri)
    assert files.model_file.read_bytes() == result.model_file.read_bytes()
    assert files.train_set is not None
    assert files.train_set.read_bytes() == data_sets[0].read_bytes()
    assert json.loads(json.dumps(result.to_dict()))["version"] == "1"


def test_warm_start_begins_from_the_champion_or_says_why_not(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path
) -> None:
    train_set, holdout_set = data_sets
    first = _train(data_sets, tracking_uri, "warm", tmp_path / "v1.pt")
    registry.promote("warm", first.version, tracking_uri)
    client = MlflowClient(tracking_uri)
    notes = {}
    for family in ("resnet", "dilated"):
        result = train_challenger(train_set, holdout_set, epochs=EPOCHS, seed=0, tracking_uri=tracking_uri,
                                  model_name="warm", out_model=tmp_path / f"{family}.pt", family=family,
                                  warm_start=True, augment_severity=0.5)
        notes[family] = client.get_run(result.run_id).data.params["warm_start"]
        assert client.get_run(result.run_id).data.params["augment_severity"] == "0.5"
        assert client.get_run(result.run_id).data.params["family"] == family
        assert load_model(result.model_file)[1].architecture == {"resnet": "ResidualCNN", "dilated": "DilatedCNN"}[family]
    assert notes == {"resnet": "champion v1",
                     "dilated": "from scratch: champion v1 differs (family ResidualCNN != DilatedCNN)"}


def test_each_training_is_a_new_version_and_moves_the_alias(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path
) -> None:
    first = _train(data_sets, tracking_uri, "twice", tmp_path / "a.pt")
    second = _train(data_sets, tracking_uri, "twice", tmp_path / "b.pt")
    assert (first.version, second.version) == ("1", "2")
    assert first.run_id != second.run_id
    assert registry.get_version_by_alias("twice", CHALLENGER, tracking_uri) == "2"


def test_honours_mlflow_run_id_and_a_rerun_does_not_duplicate(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(registry.ensure_experiment("kubeflow", tracking_uri)).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    first = _train(data_sets, tracking_uri, "resumed", tmp_path / "first.pt")
    assert first.run_id == run_id
    assert client.get_model_version("resumed", first.version).run_id == run_id
    assert client.get_run(run_id).info.status == "RUNNING"  # Kubeflow's run: Kubeflow closes it

    # The pod is killed after registering and restarted with the same run: no second version.
    registry.set_alias("resumed", CHALLENGER, first.version, tracking_uri)
    again = _train(data_sets, tracking_uri, "resumed", tmp_path / "again.pt")
    assert again.reused
    assert (again.version, again.run_id) == (first.version, run_id)
    assert len(client.search_model_versions("name = 'resumed'")) == 1
    assert again.model_file.read_bytes() == first.model_file.read_bytes()
    assert again.metrics["val_accuracy"] == pytest.approx(first.metrics["val_accuracy"])
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_unknown_mlflow_run_id(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    message = "MLflow at sqlite:.*: cannot resume the run MLFLOW_RUN_ID=0123456789abcdef: Run "
    with pytest.raises(RegistryError, match=message):
        _train(data_sets, tracking_uri, "ghost", tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_tracking_uri_from_the_environment(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    result = train_challenger(data_sets[0], None, epochs=1, seed=1, tracking_uri=None,
                              model_name="env", out_model=tmp_path / "m.pt")
    assert "val_accuracy" not in result.metrics
    assert registry.get_version_by_alias("env", CHALLENGER, tracking_uri) == result.version


def test_refuses_mismatched_classes(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path
) -> None:
    other = ImageSet(np.zeros((3, 8, 8), np.float32), np.array([0, 1, 0]), ("ok", "bad"))
    other.save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"other.npz: class names \['ok', 'bad'\] differ"):
        train_challenger(data_sets[0], tmp_path / "other.npz", epochs=1, seed=0,
                         tracking_uri=tracking_uri, model_name="x", out_model=tmp_path / "m.pt")


def test_refuses_an_empty_training_set(tracking_uri: str, tmp_path: Path) -> None:
    ImageSet(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), ("a", "b")).save(
        tmp_path / "empty.npz"
    )
    with pytest.raises(ValueError, match="empty.npz: the training set is empty"):
        train_challenger(tmp_path / "empty.npz", None, epochs=1, seed=0,
                         tracking_uri=tracking_uri, model_name="x", out_model=tmp_path / "m.pt")
    assert registry.get_version_by_alias("x", CHALLENGER, tracking_uri) is None


def test_a_crash_before_registration_leaves_one_version_after_the_rerun(
    data_sets: tuple[Path, Path], tracking_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(registry.ensure_experiment("kubeflow", tracking_uri)).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    # The first attempt got as far as uploading its files, then the pod was killed.
    (tmp_path / "partial.pt").write_bytes(b"not a model: the pod died while writing it")
    registry.log_model_files(run_id, tmp_path / "partial.pt", None, tracking_uri)
    assert registry.find_version_for_run("crashed", run_id, tracking_uri) is None

    result = _train(data_sets, tracking_uri, "crashed", tmp_path / "m.pt")
    assert not result.reused
    assert len(client.search_model_versions("name = 'crashed'")) == 1
    files = registry.download_version("crashed", result.version, tmp_path / "dl", tracking_uri)
    assert files.model_file.read_bytes() == result.model_file.read_bytes()
