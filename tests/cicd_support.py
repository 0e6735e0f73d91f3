"""Shared helpers of the CI/CD tests: the repository root and the linters' binaries."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str, package: str) -> str:
    """Path of `name` (installed with this environment, else on PATH), or skip naming the tool."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with `pip install {package}`, part of .[test])")
    return found
