"""A local MLflow tracking server: SQLite backend, proxied artifact store, on loopback.

`make run` starts one so the MLflow UI shows the runs and the registry while the demo works.
It runs in its own session so that stopping it also stops the uvicorn worker it spawns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from serving.server import free_port


class MlflowServerError(RuntimeError):
    """The tracking server did not become healthy; the message carries its log."""


class MlflowServer:
    """`mlflow server` with its database and artifacts under `work_dir`."""

    def __init__(self, work_dir: str | Path, port: int | None = None, start_timeout: float = 90.0) -> None:
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "mlflow-server.log"

    def start(self) -> "MlflowServer":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((self.work_dir / "artifacts").resolve()),
        ]
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir,
                                            start_new_session=True)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MlflowServerError(f"mlflow server exited with {self.process.returncode}:\n"
                                        f"{self.log_file.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise MlflowServerError(f"mlflow server at {self.tracking_uri} not healthy after {self.start_timeout} s; "
                                f"see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
