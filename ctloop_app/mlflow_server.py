"""A local MLflow tracking server: SQLite backend, proxied artifact store, on loopback.

`make run` starts one so the MLflow UI shows the runs and the registry while the demo works.
It runs as a ctloop.process.ServerProcess. `mlflow server` forwards SIGTERM to the uvicorn
server it starts; stop() sends SIGTERM to the whole process group all the same. The server's
job execution (MLflow's background job runner and Huey consumers, used by its GenAI features, not
by the tracking store or the model registry) is off: it added eight processes, a zombie left
to PID 1 on stop, and most of the start-up time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ctloop import http
from ctloop.process import ServerProcess, ServerStartError, free_port


class MlflowServerError(ServerStartError):
    """The tracking server did not become healthy; the message carries the tail of its log."""


class MlflowServer:
    """`mlflow server` with its database and artifacts under `work_dir`."""

    def __init__(self, work_dir: str | Path, port: int | None = None, start_timeout: float = 90.0) -> None:
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._server: ServerProcess | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "mlflow-server.log"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The `mlflow server` process while it runs (its pid is the process group's id)."""
        return self._server.process if self._server is not None else None

    def start(self) -> "MlflowServer":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((self.work_dir / "artifacts").resolve()),
        ]
        self._server = ServerProcess(
            command, self.log_file, self._healthy, name=f"mlflow server at {self.tracking_uri}",
            start_timeout=self.start_timeout, cwd=self.work_dir, append_log=False, terminate="group",
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            error=MlflowServerError, poll=0.25,
        )
        self._server.start()
        return self

    def _healthy(self) -> bool:
        answer = http.probe(f"{self.tracking_uri}/health", timeout=1)
        return answer is not None and answer.status_code == 200

    def stop(self, timeout: float = 20.0) -> None:
        if self._server is not None:
            self._server.stop(timeout)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
