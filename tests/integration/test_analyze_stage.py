"""The analyze stage's entry point against MLflow on SQLite: the challenger is compared with the
version the `champion` alias names, and the decision document for notify is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from components.analyze.logic import analyze, analyze_against_champion
from ctloop import registry
from ctloop.canary import Canary
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, predict_proba
from ctloop.registry import RegistryError
from serving_support import CLASS_NAMES, write_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three untrained models that answer differently, a holdout and a golden set of digits."""
    data = load_digits()
    images, labels = (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)
    folder = tmp_path_factory.mktemp("analyze")
    paths = {name: write_model("champion", folder / f"{name}.pt", seed) for seed, name in enumerate(("a", "b", "c"))}
    paths["holdout"], paths["golden"] = folder / "holdout.npz", folder / "golden.npz"
    ImageSet(images[:120], labels[:120], CLASS_NAMES).save(paths["holdout"])
    ImageSet(images[120:300], labels[120:300], CLASS_NAMES).save(paths["golden"])
    return paths


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def run_stage(files: dict[str, Path], challenger: str, uri: str, name: str, out: Path):
    return analyze_against_champion(files[challenger], files["holdout"], files["golden"], uri, name,
                                    0.01, 0.02, 2, 0.05,
                                    out / "report.md", out / "decision.json", out / "canary.npz")


def test_compares_with_the_version_the_alias_names(files, tracking_uri: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for model in ("a", "b"):
        registry.register_model_file("followed", files[model], tracking_uri=tracking_uri)
    registry.promote("followed", "1", tracking_uri)  # the champion is model a, not the newer b
    result = run_stage(files, "c", tracking_uri, "followed", tmp_path)

    direct = analyze(files["c"], files["a"], files["holdout"], files["golden"], 0.01, 0.02, 2, 0.05,
                     tmp_path / "direct.md")
    assert result.scores == direct.scores and (result.deploy, result.reasons) == (direct.deploy, direct.reasons)
    other = analyze(files["c"], files["b"], files["holdout"], files["golden"], 0.01, 0.02, 2, 0.05,
                    tmp_path / "other.md")
    assert result.scores["champion"] != other.scores["champion"]  # a and b answer differently

    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision == result.decision("1")
    assert decision["deltas"]["golden accuracy"] == pytest.approx(
        result.scores["challenger"]["golden"].accuracy - result.scores["champion"]["golden"].accuracy)
    assert (tmp_path / "report.md").read_text().startswith("# Challenger vs champion")
    assert capsys.readouterr().out == "".join(reason + "\n" for reason in result.reasons)

    canary, golden = Canary.load(tmp_path / "canary.npz"), ImageSet.load(files["golden"])
    np.testing.assert_array_equal(canary.images, golden.images[:64])
    np.testing.assert_array_equal(canary.labels, golden.labels[:64])
    np.testing.assert_allclose(canary.probabilities, predict_proba(load_model(files["c"])[0], golden.images[:64]),
                               atol=1e-6)  # the challenger's own answers, which deploy requires back


def test_the_champion_itself_is_not_deployed(files, tracking_uri: str, tmp_path: Path) -> None:
    version = registry.register_model_file("same", files["a"], tracking_uri=tracking_uri)
    registry.promote("same", version, tracking_uri)
    result = run_stage(files, "a", tracking_uri, "same", tmp_path)
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert (decision["deploy"], decision["champion_version"]) == (False, version)
    assert decision["deltas"] == {"holdout accuracy": 0.0, "golden accuracy": 0.0}
    assert decision["reasons"] == result.reasons and result.reasons[0].startswith("Fail:")


def test_a_model_without_a_champion_is_an_error_naming_the_alias(files, tracking_uri: str, tmp_path: Path) -> None:
    registry.register_model_file("unpromoted", files["a"], tracking_uri=tracking_uri)
    with pytest.raises(RegistryError, match="model 'unpromoted' has no alias 'champion'"):
        run_stage(files, "b", tracking_uri, "unpromoted", tmp_path)
    assert not (tmp_path / "decision.json").exists() and not (tmp_path / "report.md").exists()
