"""The package works when installed: a wheel of this tree in a fresh venv outside the checkout.

`pip wheel --no-deps` builds ctloop from a copy of the tree; it goes into a venv whose
dependencies (pyproject's [project].dependencies, installed with this machine's pip config, so
torch==2.13.0 comes from its find-links) are kept in
~/.cache/ctloop/wheel-venv/<sha256 of the dependency list>/ like pip's own cache, while the ctloop
wheel itself is reinstalled (`--force-reinstall --no-deps`) on every run. From a temporary
directory (never the checkout), isolated (`python -I`, PATH = the venv and /usr/bin:/bin), the
installed `ctloop compile --cluster` and `ctloop submit` run against the local KFP v2beta1 server,
and the serving package data (config.properties, log4j2.xml, handlers, the wire contract in an
archive) is read from the installed package.

Slow: the first run builds the dependency venv (torch, MLflow, kfp, TorchServe; measured on the
shared 2-core machine: 253 s of 271 s in all); a warm run only builds and reinstalls the wheel:
22 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kfp_support import TOKEN, serve_fake_kfp
from wheel_support import build_wheel, run

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctloop" / "wheel-venv"
STAMP = ".dependencies-sha256"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
BUILD_TIMEOUT = 1800

pytestmark = pytest.mark.slow

# Runs in the installed venv: where every module and data file comes from, and an archive built
# from the installed handlers and wire contract.
CHECKER = r"""
import json, sys, zipfile
from collections.abc import Iterator
from pathlib import Path
import ctloop, serving, kubeflow_pipeline, ctloop_app
from serving import archive, server
from serving.server import instance_config, free_ports, shipped_log_config
config = instance_config(free_ports(), Path("store"))
Path("model.pt").write_bytes(b"not a model; the archiver does not look")
mar = archive.build_archive("model.pt", "champion", "7", "model_store")
print(json.dumps({
    "modules": [m.__file__ for m in (ctloop, serving, kubeflow_pipeline, ctloop_app, archive, server)],
    "log_config": str(shipped_log_config()),
    "log_config_in_vmargs": f"-Dlog4j.configurationFile=file://{shipped_log_config()}" in config,
    "token_auth": "disable_token_authorization" not in config,
    "archive": sorted(zipfile.ZipFile(mar).namelist()),
    "prefix": sys.prefix,
}))
"""




def dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def dependency_venv() -> tuple[Path, float | None]:
    """The venv holding ctloop's dependencies, built if missing or stamped with another list;
    returns it and the seconds the build took (None when the cached one was current)."""
    deps = dependencies()
    digest = hashlib.sha256(json.dumps(deps).encode()).hexdigest()
    venv = CACHE / digest[:16]
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and (venv / "bin" / "python").is_file():
        return venv, None
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    run(["python3.11", "-m", "venv", str(venv)])
    requirements = venv / "dependencies.txt"
    requirements.write_text("\n".join(deps) + "\n")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "1", "-r", str(requirements)],
        timeout=BUILD_TIMEOUT)
    stamp.write_text(digest + "\n")
    return venv, time.monotonic() - started


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cached dependency venv with a wheel of this working tree freshly installed; its bin/."""
    started = time.monotonic()
    wheel = build_wheel(tmp_path_factory.mktemp("ctloop-source"), tmp_path_factory.mktemp("wheel"))
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "venv.lock", "w") as lock:  # one builder or user of the venv at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        venv, seconds = dependency_venv()
        if seconds is not None:
            print(f"\n[wheel venv] dependencies installed in {seconds:.1f} s")
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps",
             str(wheel)])
        print(f"\n[wheel venv] wheel built and installed in {time.monotonic() - started:.1f} s")
        yield venv / "bin"
        fcntl.flock(lock, fcntl.LOCK_UN)


def isolated_env(bin_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def test_installed_package_reads_its_data_from_the_install(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "python"), "-I", "-c", CHECKER], cwd=tmp_path,
                 env=isolated_env(installed, tmp_path), timeout=300)
    report = json.loads(result.stdout.splitlines()[-1])
    prefix = report["prefix"] + "/"
    assert all(module.startswith(prefix) for module in report["modules"]), report["modules"]
    assert not any(module.startswith(str(ROOT)) for module in report["modules"])
    assert report["log_config"].startswith(prefix) and report["log_config_in_vmargs"] and report["token_auth"]
    assert report["archive"] == ["MAR-INF/MANIFEST.json", "champion_handler.py", "ctloop/__init__.py",
                                 "ctloop/wire.py", "ctloop_handler_base.py", "model-config.yaml", "model.pt",
                                 "prediction_log.py"]


def test_installed_cli_compiles_and_submits(installed: Path, tmp_path: Path) -> None:
    ctloop = str(installed / "ctloop")
    run([ctloop, "compile", "--cluster", "--registry", "ghcr.io/acme", "--tag", COMMIT, "--out", "pipeline.yaml"],
        cwd=tmp_path, env=isolated_env(installed, tmp_path), timeout=300)
    documents = list(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))
    assert "platforms" in documents[1], "--cluster adds the Kubernetes platform spec"
    executors = documents[0]["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors if "container" in e} >= {f"ghcr.io/acme/ctloop-train:{COMMIT}"}

    with serve_fake_kfp() as (host, fake):
        result = run([ctloop, "submit", "--commit", COMMIT, "--registry", "ghcr.io/acme", "--schedule", "0 0 * * * *",
                      "--output-json", "submission.json"],
                     cwd=tmp_path, env=isolated_env(installed, tmp_path, KFP_HOST=host, KFP_TOKEN=TOKEN), timeout=300)
    submission = json.loads((tmp_path / "submission.json").read_text())
    assert submission["pipeline_version_name"] == COMMIT
    assert f"run: {host}/#/runs/details/" in result.stdout
    assert [upload["query"]["name"] for upload in fake.uploads] == [[COMMIT]]
    assert len(fake.bodies("POST", "runs")) == 1 and len(fake.recurring) == 1
