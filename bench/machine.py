"""The machine the numbers were measured on, and how busy it was while they were."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import psutil
import torch


def describe_machine() -> dict[str, object]:
    """CPU model, cores, RAM and the versions that shape the figures."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchserve": metadata.version("torchserve"),
        "fastapi": metadata.version("fastapi"),
        "uvicorn": metadata.version("uvicorn"),
        "uvicorn_http": "httptools" if _installed("httptools") else "h11",
        "uvicorn_loop": "uvloop" if _installed("uvloop") else "asyncio",
        "java": _java_version(),
    }


def load_average() -> float:
    """1-minute load average: other work on the machine competes with the benchmark for cores."""
    return round(os.getloadavg()[0], 2)


def _cpu_model() -> str:
    """The first `model name` of /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _java_version() -> str:
    """TorchServe's frontend runs on the JVM, so its version matters too."""
    java = shutil.which("java")
    if java is None:
        return "not found"
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    first = (result.stderr or result.stdout).splitlines()
    return first[0].strip() if first else "unknown"
