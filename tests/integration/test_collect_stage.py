"""The collect stage's entry point against MLflow on SQLite: it follows the `champion` alias,
merges that version's training set when asked, and hands on the champion's image size and
classes whatever it merged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.collect.logic import collect_from_registry
from ctloop import registry
from ctloop.collected import CollectedSet
from ctloop.images import ImageSet
from ctloop.modelfile import ModelCard, save_model
from ctloop.models import build_model
from ctloop.registry import RegistryError
from store_support import CLASSES, SIZE, StoreWriter


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite registry for the module; each test registers under its own model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def window(tmp_path: Path) -> tuple[StoreWriter, Path]:
    """A store with four predictions and the monitor's window file of them."""
    store = StoreWriter(tmp_path / "store")
    records = store.log_many([0.5] * 4)
    path = tmp_path / "window.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return store, path


def register(name: str, uri: str, folder: Path, train_rows: int | None, promote: bool = False) -> str:
    """A version of `name` (an untrained model of the store's classes and size), registered with
    a training set of `train_rows` images, or without one when None."""
    folder.mkdir(parents=True, exist_ok=True)
    train_set = None
    if train_rows is not None:
        images = np.random.default_rng(train_rows).random((train_rows, *SIZE), dtype=np.float32)
        train_set = folder / f"train-{train_rows}.npz"
        ImageSet(images, np.arange(train_rows, dtype=np.int64) % len(CLASSES), CLASSES).save(train_set)
    model = folder / "model.pt"
    save_model(build_model("champion", len(CLASSES), SIZE), ModelCard("champion", CLASSES, SIZE, "ResidualCNN"), model)
    version = registry.register_model_file(name, model, train_set, tracking_uri=uri)
    if promote:
        registry.promote(name, version, uri)
    return version


def test_merges_the_training_set_of_the_version_the_alias_names(window, tracking_uri: str, tmp_path: Path) -> None:
    store, records = window
    register("merge", tracking_uri, tmp_path / "v1", train_rows=6, promote=True)
    register("merge", tracking_uri, tmp_path / "v2", train_rows=9)  # newer, but not the champion
    out = tmp_path / "collected.npz"
    result = collect_from_registry(records, store.root, out, True, tracking_uri, "merge")
    assert result.champion_version == "1"
    assert result.outputs() == {"new_samples": 4, "total_samples": 10, "image_height": 8, "image_width": 8,
                                "num_classes": 3}
    collected = CollectedSet.load(out)
    assert collected.is_new.tolist() == [True] * 4 + [False] * 6
    np.testing.assert_array_equal(collected.images[4:], ImageSet.load(tmp_path / "v1" / "train-6.npz").images)
    assert collected.class_names == CLASSES


def test_without_merging_the_champion_still_defines_the_task(window, tracking_uri: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    store, records = window
    register("alone", tracking_uri, tmp_path / "v1", train_rows=6, promote=True)
    result = collect_from_registry(records, store.root, tmp_path / "collected.npz", False, tracking_uri, "alone")
    assert result.outputs() == {"new_samples": 4, "total_samples": 4, "image_height": 8, "image_width": 8,
                                "num_classes": 3}
    assert len(CollectedSet.load(tmp_path / "collected.npz")) == 4
    assert str(result.summary.to_dict()) in capsys.readouterr().out


def test_an_empty_tracking_uri_means_mlflow_tracking_uri(window, tracking_uri: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline passes "" when no URI is configured; the stage's environment names it."""
    store, records = window
    register("from-env", tracking_uri, tmp_path / "v1", train_rows=6, promote=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    result = collect_from_registry(records, store.root, tmp_path / "collected.npz", True, "", "from-env")
    assert result.outputs()["total_samples"] == 10


def test_a_model_without_a_champion_is_an_error_naming_the_alias(window, tracking_uri: str, tmp_path: Path) -> None:
    store, records = window
    register("no-champion", tracking_uri, tmp_path / "v1", train_rows=6)
    with pytest.raises(RegistryError, match="model 'no-champion' has no alias 'champion' in MLflow at sqlite:"):
        collect_from_registry(records, store.root, tmp_path / "collected.npz", True, tracking_uri, "no-champion")
    assert not (tmp_path / "collected.npz").exists()


def test_a_champion_without_its_training_set_is_an_error(window, tracking_uri: str, tmp_path: Path) -> None:
    store, records = window
    register("no-train-set", tracking_uri, tmp_path / "v1", train_rows=None, promote=True)
    with pytest.raises(ValueError, match="champion version 1 of 'no-train-set' has no training set; register"):
        collect_from_registry(records, store.root, tmp_path / "collected.npz", False, tracking_uri, "no-train-set")
    assert not (tmp_path / "collected.npz").exists()
