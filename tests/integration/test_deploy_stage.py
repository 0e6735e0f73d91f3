"""The deploy stage against a real TorchServe and MLflow on SQLite: a deploy moves TorchServe's
default and the `champion` / `previous-champion` aliases together, and when the alias cannot
move (a registered model MLflow does not have, MLflow down) serving is switched back, so the
two never disagree about which version is the champion.

The module shares one TorchServe; each test deploys the next registry version of the same
registered model and compares with the state it found, so the tests do not depend on order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.deploy.logic import DeployFailedError, deploy_challenger, deploy_to_torchserve
from ctloop import registry
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, predict_proba
from ctloop.registry import CHAMPION, PREVIOUS_CHAMPION, RegistryError
from deploy_support import aliases, new_challenger
from serving_support import CLASS_NAMES, random_images

pytestmark = pytest.mark.serving

REGISTERED = "ctloop-champion"
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    ImageSet(random_images(24, seed=5), np.arange(24, dtype=np.int64) % len(CLASS_NAMES), CLASS_NAMES).save(path)
    return path


@pytest.fixture(scope="module")
def champion(serving, model_files, tracking_uri: str) -> str:
    """Version 1: MLflow's champion and TorchServe's only (so default) champion version."""
    version = registry.register_model_file(REGISTERED, model_files["champion"], tracking_uri=tracking_uri)
    registry.promote(REGISTERED, version, tracking_uri)
    serving.deploy_archive(model_files["champion"], "champion", version)
    return version


def test_a_deploy_moves_the_default_and_both_aliases(serving, champion, tracking_uri: str, golden_set: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_default, old_champion = serving.client.default_version("champion"), aliases(tracking_uri)[CHAMPION]
    model, version, canary_set = new_challenger(tmp_path, tracking_uri, 11, golden_set)
    monkeypatch.setenv("CTLOOP_TS_KEY_FILE", str(serving.server.key_file))  # as the stage receives its keys

    outcome = deploy_to_torchserve(model, version, canary_set, serving.server.model_store,
                                   serving.server.inference_url, serving.server.management_url, tracking_uri,
                                   REGISTERED, keep_versions=3)

    assert serving.client.default_version("champion") == version
    assert serving.client.predict("champion", random_images(2, seed=6), canary=True).model_version == version
    assert aliases(tracking_uri) == {CHAMPION: version, PREVIOUS_CHAMPION: old_champion}
    assert (outcome.old_version, outcome.previous_champion) == (old_default, old_champion)
    assert outcome.outputs() == {"old_version": old_default, "new_version": version, "status": "deployed"}
    steps = ["register", "wait_ready", "smoke_test", "set_default", "verify"]
    assert [step["name"] for step in outcome.steps] == steps
    golden = ImageSet.load(golden_set)
    expected = float(np.mean(predict_proba(load_model(model)[0], golden.images).argmax(axis=1) == golden.labels))
    assert outcome.canary_accuracy == pytest.approx(expected)
    assert outcome.metrics() == pytest.approx(
        {**{f"{step['name']}_seconds": step["seconds"] for step in outcome.steps}, "canary_accuracy": expected})


def test_an_alias_that_cannot_move_switches_serving_back(serving, champion, tracking_uri: str, golden_set: Path,
                                                         tmp_path: Path) -> None:
    """The new version serves, then MLflow refuses the alias (it has no such registered model)."""
    old_default, old_aliases = serving.client.default_version("champion"), aliases(tracking_uri)
    model, version, canary_set = new_challenger(tmp_path, tracking_uri, 22, golden_set)

    with pytest.raises(DeployFailedError) as failed:
        deploy_challenger(model, version, canary_set, serving.server.model_store, serving.client, "no-such-model",
                          tracking_uri)

    assert str(failed.value).startswith(
        f"champion version {version} served but the registry alias could not move, so serving was switched "
        f"back to version {old_default}: ")
    assert f"model 'no-such-model' has no version {version}" in str(failed.value)
    assert isinstance(failed.value.__cause__, RegistryError)
    assert serving.client.default_version("champion") == old_default
    assert version not in serving.client.versions("champion")
    assert serving.client.predict("champion", random_images(2, seed=7), canary=True).model_version == old_default
    assert aliases(tracking_uri) == old_aliases


def test_a_registry_that_cannot_be_reached_stops_the_deploy_before_serving_changes(
        serving, champion, tracking_uri: str, golden_set: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    old_default, old_versions = serving.client.default_version("champion"), serving.client.versions("champion")
    model, version, canary_set = new_challenger(tmp_path, tracking_uri, 21, golden_set)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")

    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {DOWN}"):
        deploy_challenger(model, version, canary_set, serving.server.model_store, serving.client, REGISTERED, DOWN)

    assert (serving.client.default_version("champion"), serving.client.versions("champion")) == (
        old_default, old_versions)


def test_a_model_file_that_is_not_the_registered_one_deploys_nothing(
        serving, champion, tracking_uri: str, golden_set: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage's model file (a kfp artifact) differs from what the version's sha256 tag says."""
    old_default, old_versions = serving.client.default_version("champion"), serving.client.versions("champion")
    old_aliases = aliases(tracking_uri)
    model, version, canary_set = new_challenger(tmp_path, tracking_uri, 23, golden_set)
    model.write_bytes(model.read_bytes() + b"swapped")
    monkeypatch.setenv("CTLOOP_TS_KEY_FILE", str(serving.server.key_file))

    with pytest.raises(registry.IntegrityError, match=f"^{model.name} of '{REGISTERED}' version {version} has sha256"):
        deploy_to_torchserve(model, version, canary_set, serving.server.model_store, serving.server.inference_url,
                             serving.server.management_url, tracking_uri, REGISTERED)

    assert (serving.client.default_version("champion"), serving.client.versions("champion")) == (
        old_default, old_versions)
    assert aliases(tracking_uri) == old_aliases
    assert not list(serving.server.model_store.glob(f"champion-v{version}.mar"))
