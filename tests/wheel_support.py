"""Building a wheel of this working tree, as an image build does, for the tests that install it
into venvs of their own (tests/integration/test_wheel.py, test_stage_requirements.py), and the
cached venv of ctloop's dependencies that seeds fresh venvs (test_wheel.py, and setup-python's
stand-in in test_act.py)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from cicd_support import ROOT

DEPENDENCY_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctloop" / "dependency-venv"
STAMP = ".requirements-sha256"
BUILD_TIMEOUT = 1800  # seconds for one `pip install -r`

# What components/Dockerfile copies into the image before `pip install --no-deps .`.
DOCKERFILE_COPIES = ("pyproject.toml", "README.md", "ctloop", "ctloop_app", "components", "serving",
                     "kubeflow_pipeline")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run that fails the test with the command and the tail of its output."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build_wheel(source: Path, out: Path) -> Path:
    """A wheel of what the Dockerfile copies, built from a copy in `source` (so nothing of the
    checkout, e.g. an editable install's metadata, leaks in); written to `out`."""
    for name in DOCKERFILE_COPIES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(source)])
    (wheel,) = out.glob("ctloop-*.whl")
    return wheel


def cached_venv(parent: Path, prefix: str, requirements: Path) -> tuple[Path, float | None]:
    """The venv `<parent>/<prefix><sha256 of requirements>` holding what `requirements` lists, kept
    between runs and checkouts like pip's own cache; built (with this machine's pip config, so
    torch==2.13.0 comes from its find-links) if missing or stamped with another digest. Returns
    it and the seconds the build took (None when the cached one was current). Call it locked."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = parent / f"{prefix}{digest[:16]}"
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and (venv / "bin" / "python").is_file():
        return venv, None
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    run(["python3.11", "-m", "venv", str(venv)])
    # One retry, not pip's five with backoff: an index this machine cannot reach (the torch stages'
    # --extra-index-url, where only PyPI and local wheels are reachable) would otherwise cost
    # about 7 s for every package pip looks up, a quarter of an hour per torch stage.
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "1", "-r", str(requirements)],
        timeout=BUILD_TIMEOUT)
    stamp.write_text(digest + "\n")
    return venv, time.monotonic() - started


def dependency_site_packages() -> tuple[Path, float | None]:
    """The site-packages of a cached venv (cached_venv, in DEPENDENCY_CACHE) holding pyproject's
    [project].dependencies and never ctloop itself; returns it and the seconds a build took."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    DEPENDENCY_CACHE.mkdir(parents=True, exist_ok=True)
    with open(DEPENDENCY_CACHE / "venv.lock", "w") as lock:  # one builder at a time; then read-only
        fcntl.flock(lock, fcntl.LOCK_EX)
        requirements = DEPENDENCY_CACHE / "dependencies.txt"
        requirements.write_text("\n".join(dependencies) + "\n")
        venv, seconds = cached_venv(DEPENDENCY_CACHE, "", requirements)
    return site_packages(venv / "bin" / "python"), seconds


def site_packages(python: Path) -> Path:
    """The purelib folder of `python`'s environment."""
    return Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


def seeded_venv(venv: Path, dependencies_at: Path) -> Path:
    """A fresh venv at `venv` that also imports from `dependencies_at` (a .pth file: pip sees those
    distributions as installed, so installing ctloop there installs ctloop alone); returns its bin/."""
    run(["python3.11", "-m", "venv", str(venv)])
    (site_packages(venv / "bin" / "python") / "ctloop-dependencies.pth").write_text(f"{dependencies_at}\n")
    return venv / "bin"
