"""The desired state (serving.state): what a (re)starting TorchServe serves."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from serving.state import (
    STATE_FILE,
    ServedVersion,
    ServingState,
    StateError,
    main,
    model_sha256,
    read_state,
    render_config,
    write_state,
)

V1, V2 = ServedVersion("champion-v1.mar", "a" * 64), ServedVersion("champion-v2.mar", "b" * 64, workers=2)


def two_versions(default: bool = False) -> ServingState:
    return ServingState().serve("champion", "1", V1, default=False).serve("champion", "2", V2, default=default)


def test_the_first_version_is_the_default_and_a_later_one_only_when_asked() -> None:
    assert two_versions().model("champion").default == "1"
    assert two_versions(default=True).model("champion").default == "2"


def test_the_default_cannot_stop_serving() -> None:
    with pytest.raises(StateError, match="champion version 1 is the default; it cannot stop serving"):
        two_versions().without("champion", ["1"])
    assert list(two_versions().without("champion", ["2"]).model("champion").versions) == ["1"]


def test_the_snapshot_is_what_torchserve_restores() -> None:
    snapshot = json.loads(two_versions(default=True).snapshot())
    assert snapshot["modelCount"] == 2
    assert snapshot["models"]["champion"]["2"] == {
        "defaultVersion": True, "marName": "champion-v2.mar", "minWorkers": 2, "maxWorkers": 2,
        "batchSize": 1, "maxBatchDelay": 0, "responseTimeout": 60}
    assert snapshot["models"]["champion"]["1"]["defaultVersion"] is False


def test_the_config_drops_load_models_and_adds_the_snapshot() -> None:
    rendered = render_config("load_models=all\nenable_model_api=true\n", two_versions())
    assert rendered.splitlines() == ["enable_model_api=true", f"model_snapshot={two_versions().snapshot()}"]
    assert render_config("load_models=all\n", None) == "load_models=all\n"  # a store nothing was deployed to


def test_a_written_state_reads_back_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_state(tmp_path, two_versions(default=True))
    write_state(tmp_path, two_versions())
    assert read_state(tmp_path) == two_versions()
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert read_state(tmp_path / "elsewhere") is None


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "is not a ctloop serving state"),
    ('{"models": {"champion": {"versions": {}}}}', "is not a ctloop serving state"),
    ('{"models": {"champion": {"default": "3", "versions": {}}}}', "the default champion version 3 is not among"),
])
def test_a_broken_state_file_is_named(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(StateError, match=problem) as error:
        read_state(tmp_path)
    assert str(tmp_path / STATE_FILE) in str(error.value)


def test_the_model_hash_is_the_archived_model_files(tmp_path: Path) -> None:
    archive = tmp_path / "champion-v1.mar"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("model.pt", b"weights")
        bundle.writestr("MAR-INF/MANIFEST.json", "{}")
    assert model_sha256(archive) == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    with pytest.raises(StateError, match="junk.mar is not a ctloop model archive"):
        model_sha256(tmp_path / "junk.mar")


def test_the_image_entrypoint_renders_the_config(tmp_path: Path) -> None:
    base, out = tmp_path / "config.properties", tmp_path / "out.properties"
    base.write_text("load_models=all\n")
    write_state(tmp_path, two_versions())
    assert main(["config", str(base), str(tmp_path), str(out)]) == 0
    assert out.read_text() == render_config("load_models=all\n", two_versions())
    (tmp_path / STATE_FILE).write_text("{")
    assert main(["config", str(base), str(tmp_path), str(out)]) == 1
