"""Building a wheel of this working tree, as an image build does, for the tests that install it
into venvs of their own (tests/integration/test_wheel.py, test_stage_requirements.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cicd_support import ROOT

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
