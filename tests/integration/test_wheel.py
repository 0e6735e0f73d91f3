"""The package works when installed: a wheel of this tree in a fresh venv outside the checkout.

`pip wheel --no-deps` builds ctloop from a copy of the tree; it goes (`--no-deps`) into a fresh
venv seeded with ctloop's dependencies (pyproject's [project].dependencies, installed with this
machine's pip config, so torch==2.13.0 comes from its find-links), which are kept in
~/.cache/ctloop/dependency-venv/<sha256 of the dependency list>/ like pip's own cache
(tests/wheel_support.py; a .pth file in the fresh venv points there). From a temporary
directory (never the checkout), isolated (`python -I`, PATH = the venv and /usr/bin:/bin), the
installed `ctloop compile --cluster` and `ctloop submit` run against the local KFP v2beta1 server,
and the serving package data (config.properties, log4j2.xml, handlers, the wire contract in an
archive) is read from the installed package.

Slow: the first run builds the dependency venv (torch, MLflow, kfp, TorchServe; measured on the
shared 2-core machine: 253 s of 271 s in all); a warm run only builds the wheel and installs it
into a fresh seeded venv.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from kfp_support import TOKEN, serve_fake_kfp
from wheel_support import build_wheel, dependency_site_packages, run, seeded_venv

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"

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



@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv seeded with the cached dependencies, with a wheel of this working tree
    installed; its bin/."""
    started = time.monotonic()
    wheel = build_wheel(tmp_path_factory.mktemp("ctloop-source"), tmp_path_factory.mktemp("wheel"))
    dependencies_at, seconds = dependency_site_packages()
    if seconds is not None:
        print(f"\n[wheel venv] dependencies installed in {seconds:.1f} s")
    bin_dir = seeded_venv(tmp_path_factory.mktemp("wheel-venv") / "venv", dependencies_at)
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)])
    print(f"\n[wheel venv] wheel built and installed in {time.monotonic() - started:.1f} s")
    return bin_dir


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
