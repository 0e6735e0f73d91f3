"""Building a wheel of this working tree, as an image build does, for the tests that install it
into venvs of their own (tests/integration/test_wheel.py, test_stage_requirements.py), and the
cached venv of ctloop's dependencies that seeds fresh venvs (test_wheel.py, and setup-python's
stand-in in test_act.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from cicd_support import ROOT

DEPENDENCY_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctloop" / "dependency-venv"
STAMP = ".dependencies-sha256"
BUILD_TIMEOUT = 1800

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



def dependencies() -> list[str]:
    """pyproject's [project].dependencies."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def dependency_site_packages() -> tuple[Path, float | None]:
    """The site-packages of a venv holding ctloop's dependencies and never ctloop itself, in
    DEPENDENCY_CACHE/<sha256 of the list>/ like pip's own cache (installed with this machine's pip
    config, so torch==2.13.0 comes from its find-links); built if missing, under a lock. Returns
    it and the seconds the build took (None when the cached one was current)."""
    deps = dependencies()
    digest = hashlib.sha256(json.dumps(deps).encode()).hexdigest()
    venv = DEPENDENCY_CACHE / digest[:16]
    DEPENDENCY_CACHE.mkdir(parents=True, exist_ok=True)
    with open(DEPENDENCY_CACHE / "venv.lock", "w") as lock:  # one builder at a time; then read-only
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        seconds = None
        if not (stamp.is_file() and stamp.read_text().strip() == digest and (venv / "bin" / "python").is_file()):
            started = time.monotonic()
            shutil.rmtree(venv, ignore_errors=True)
            run(["python3.11", "-m", "venv", str(venv)])
            requirements = venv / "dependencies.txt"
            requirements.write_text("\n".join(deps) + "\n")
            run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "1", "-r",
                 str(requirements)], timeout=BUILD_TIMEOUT)
            stamp.write_text(digest + "\n")
            seconds = time.monotonic() - started
    return Path(site_packages(venv / "bin" / "python")), seconds


def site_packages(python: Path) -> str:
    """The purelib folder of `python`'s environment."""
    return run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()


def seeded_venv(venv: Path, dependencies_at: Path) -> Path:
    """A fresh venv at `venv` that also imports from `dependencies_at` (a .pth file: pip sees those
    distributions as installed, so installing ctloop there installs ctloop alone); returns its bin/."""
    run(["python3.11", "-m", "venv", str(venv)])
    own = Path(site_packages(venv / "bin" / "python"))
    (own / "ctloop-dependencies.pth").write_text(f"{dependencies_at}\n")
    return venv / "bin"
