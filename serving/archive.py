"""Model archives (.mar) for TorchServe, one per model version.

The archive holds the TorchScript model file (as `model.pt`, which TorchServe's BaseHandler loads
with torch.jit), the role's handler, the shared handler modules (the base handler and the prediction log), the wire contract (as
`ctloop/wire.py`, the only part of ctloop the handlers import) and a model-config yaml. Its
file name carries the version (`champion-v3.mar`) so several versions of one model can sit in
the same model store; the model name inside is the serving name (`champion`, `b1`, `b2`, `eval`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Package data (importlib.resources): the handlers and the wire contract are copied from the
# installed packages into each archive's build folder, never reached through __file__.
HANDLER_DIR = importlib.resources.files("serving").joinpath("handlers")
SHARED_MODULES = (HANDLER_DIR.joinpath("ctloop_handler_base.py"), HANDLER_DIR.joinpath("prediction_log.py"))
WIRE_MODULE = importlib.resources.files("ctloop").joinpath("wire.py")
HANDLERS = {
    "champion": "champion_handler.py",
    "b1": "branch_handler.py",
    "b2": "branch_handler.py",
    "eval": "eval_handler.py",
}


def archive_name(role: str, version: str) -> str:
    """File name of a version's archive in a model store, e.g. `champion-v3.mar`."""
    return f"{role}-v{version}.mar"


def model_config(model_sha256: str, workers: int = 1, max_images_per_request: int = 256) -> str:
    """Per-model config yaml: fixed worker count, no server-side batching, one torch thread, and
    the model file's sha256, which the handler checks before it loads the file."""
    return (
        f"minWorkers: {workers}\n"
        f"maxWorkers: {workers}\n"
        "batchSize: 1\n"
        "maxBatchDelay: 0\n"
        "responseTimeout: 60\n"
        "torch_threads: 1\n"
        f"max_images_per_request: {max_images_per_request}\n"
        f"model_sha256: {model_sha256}\n"
    )


def build_archive(
    model_file: str | Path,
    role: str,
    version: str,
    out_dir: str | Path,
    workers: int = 1,
    max_images_per_request: int = 256,
) -> Path:
    """Package `model_file` as `<out_dir>/<role>-v<version>.mar`, atomically.

    Args:
        model_file: TorchScript file written by ctloop.modelfile.save_model.
        role: serving name and handler: champion, b1, b2 or eval.
        version: the registry's model version, e.g. "3"; becomes the TorchServe model version.
        out_dir: a model store directory (created if missing).
        workers: minWorkers/maxWorkers in the model config.
        max_images_per_request: larger requests get a 400.
    """
    if role not in HANDLERS:
        raise ValueError(f"unknown serving role {role!r}; expected one of {', '.join(HANDLERS)}")
    if not str(version).isdigit():
        raise ValueError(f"model version must be a registry version number like '3', got {version!r}")
    model_file, out_dir = Path(model_file), Path(out_dir)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file {model_file} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as build:
        build_dir = Path(build)
        shutil.copyfile(model_file, build_dir / "model.pt")
        with open(build_dir / "model.pt", "rb") as packed:
            digest = hashlib.file_digest(packed, "sha256").hexdigest()
        (build_dir / "model-config.yaml").write_text(model_config(digest, workers, max_images_per_request))
        _stage_extra_files(build_dir / "extra")
        (build_dir / HANDLERS[role]).write_bytes(HANDLER_DIR.joinpath(HANDLERS[role]).read_bytes())
        _run_archiver(build_dir, role, str(version))
        target = out_dir / archive_name(role, str(version))
        (build_dir / f"{role}.mar").replace(target)
    return target


def _stage_extra_files(extra: Path) -> None:
    """The shared handler modules and a `ctloop` package holding only the wire contract; the
    archiver copies the folder's contents beside the handler."""
    (extra / "ctloop").mkdir(parents=True)
    for module in SHARED_MODULES:
        (extra / module.name).write_bytes(module.read_bytes())
    (extra / "ctloop" / "wire.py").write_bytes(WIRE_MODULE.read_bytes())
    (extra / "ctloop" / "__init__.py").write_text('"""ctloop\'s wire contract, shipped in a TorchServe archive."""\n')


def _run_archiver(build_dir: Path, role: str, version: str) -> None:
    command = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", role,
        "--version", version,
        "--serialized-file", str(build_dir / "model.pt"),
        "--handler", str(build_dir / HANDLERS[role]),
        "--extra-files", str(build_dir / "extra"),
        "--config-file", str(build_dir / "model-config.yaml"),
        "--export-path", str(build_dir),
        "--archive-format", "default",
    ]
    # The archiver stages files in `$TMPDIR/<model name>` and removes that folder when done, so
    # two archives of one role built at once (two runs, two test workers) delete each other's
    # files: each build gets its own TMPDIR.
    (build_dir / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(build_dir / "tmp")}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed for {role} v{version}: {result.stderr.strip()}")
