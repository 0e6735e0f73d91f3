"""Start and stop a local TorchServe with its own ports, work dir, model store and keys.

Token authorization stays on. At start TorchServe writes `key_file.json` into its working
directory (here `<work_dir>/key_file.json`) with three keys: `management` (register, scale,
set-default, unregister), `inference` (predictions) and `API` (to regenerate the other two).
`LocalTorchServe.keys()` reads it; pass the result to `TorchServeClient`, which sends
`Authorization: Bearer <key>`. Keys expire after `token_expiration_min` (serving/config.properties).

TorchServe runs with `--foreground` as a ctloop.process.ServerProcess: in its own session, so
the launcher, the Java frontend and its Python workers form one process group that stop() ends as
a whole. Each instance also gets its own TMPDIR, because `torchserve` keeps a pid file in the
temp dir and refuses to start a second instance that shares it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ctloop import http, wire
from ctloop.process import ServerProcess, ServerStartError, free_ports as _free_ports
from serving.state import read_state, render_config

if TYPE_CHECKING:
    import subprocess

__all__ = ["LocalTorchServe", "Ports", "TorchServeStartError", "free_ports", "instance_config"]

# Package data, found through importlib.resources so an installed ctloop finds them wherever it runs.
SHIPPED_CONFIG = importlib.resources.files("serving").joinpath("config.properties")
SHIPPED_LOG_CONFIG = importlib.resources.files("serving").joinpath("log4j2.xml")
_AS_FILES = contextlib.ExitStack()  # real files for resources that only exist inside an archive
atexit.register(_AS_FILES.close)
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def shipped_log_config() -> Path:
    """The shipped log4j2.xml as a real file (Java reads it by path): the package's own file when
    ctloop is installed as files, else a copy kept until the process exits."""
    return _AS_FILES.enter_context(importlib.resources.as_file(SHIPPED_LOG_CONFIG)).resolve()


class TorchServeStartError(ServerStartError):
    """TorchServe did not become healthy; the message ends with the tail of its log."""


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


def free_ports() -> Ports:
    """A TorchServe instance's ports, all free on 127.0.0.1 and all different."""
    return Ports(*_free_ports(len(PORT_NAMES)))


def instance_config(ports: Ports, model_store: Path, overrides: dict[str, str] | None = None) -> str:
    """The shipped config.properties with this instance's ports, store and absolute log config."""
    settings: dict[str, str] = {}
    for line in SHIPPED_CONFIG.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    settings.update(
        inference_address=f"http://127.0.0.1:{ports.inference}",
        management_address=f"http://127.0.0.1:{ports.management}",
        metrics_address=f"http://127.0.0.1:{ports.metrics}",
        grpc_inference_port=str(ports.grpc_inference),
        grpc_management_port=str(ports.grpc_management),
        model_store=str(model_store),
        vmargs=settings.get("vmargs", "").replace(
            "-Dlog4j.configurationFile=serving/log4j2.xml",
            f"-Dlog4j.configurationFile=file://{shipped_log_config()}",
        ),
    )
    settings.update(overrides or {})
    return "".join(f"{key}={value}\n" for key, value in settings.items())


class LocalTorchServe:
    """One TorchServe on 127.0.0.1; use as a context manager or call start()/stop().

    Args:
        work_dir: holds config.properties, model_store/, logs/, tmp/ and key_file.json.
        ports: the five ports to use; free ones when omitted.
        store_dir: prediction store the champion handler logs to (CTLOOP_STORE_DIR); None: no log.
        config_overrides: extra config.properties settings, e.g. {"max_request_size": "65536"}.
        start_timeout: seconds to wait for /ping to answer Healthy.
    """

    def __init__(
        self,
        work_dir: str | Path,
        ports: Ports | None = None,
        store_dir: str | Path | None = None,
        config_overrides: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.ports = ports or free_ports()
        self.store_dir = Path(store_dir).resolve() if store_dir else None
        self.config_overrides = config_overrides or {}
        self.start_timeout = start_timeout
        self.model_store = self.work_dir / "model_store"
        self._server: ServerProcess | None = None
        self._short_tmp: Path | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        """Prometheus's scrape target: `<metrics_url>/metrics` (no key: TorchServe's metrics API
        has no token authorization; on a cluster a NetworkPolicy decides who reaches it)."""
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def process(self) -> "subprocess.Popen[bytes] | None":
        """The launcher process while TorchServe runs (its pid is the process group's id)."""
        return self._server.process if self._server is not None else None

    def start(self) -> "LocalTorchServe":
        """Launch TorchServe and return once /ping says Healthy; stop it again if it never does."""
        for directory in (self.model_store, self.log_dir, self._tmp_dir()):
            directory.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "config.properties"
        # Exactly the versions the store's desired state lists, with its defaults (serving.state).
        config.write_text(render_config(instance_config(self.ports, self.model_store, self.config_overrides),
                                        read_state(self.model_store)))
        self.key_file.unlink(missing_ok=True)
        command = [
            str(Path(sys.executable).with_name("torchserve")), "--start", "--foreground",
            "--ts-config", str(config), "--model-store", str(self.model_store), "--ncs",
        ]
        # The launcher waits for the Java frontend and forwards no signal: SIGTERM goes to the
        # frontend, which stops and reaps its workers, and the launcher exits after it. Signalling
        # the whole group at once would orphan the workers to PID 1, which in some containers
        # never reaps them (defunct processes).
        self._server = ServerProcess(
            command, self.log_dir / "stdout.log", self._healthy, name="TorchServe",
            start_timeout=self.start_timeout, cwd=self.work_dir, env=self._environment(), terminate="children",
            error=TorchServeStartError,
        )
        self._server.start()
        return self

    def _tmp_dir(self) -> Path:
        """Where the workers' Unix sockets go: `<work_dir>/tmp`, unless that path is too deep for
        a socket name (108 bytes on Linux; the workers died with "AF_UNIX path too long" under
        pytest-xdist's deeper temporary folders); then a short folder of the system's, removed
        by stop()."""
        tmp = self.work_dir / "tmp"
        if len(os.fsencode(tmp / ".ts.sock.65535")) < 108:
            return tmp
        if self._short_tmp is None:
            self._short_tmp = Path(tempfile.mkdtemp(prefix="ctloop-ts-"))
        return self._short_tmp

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
        # TS_DECODE_INPUT_REQUEST=false: JSON bodies reach the champion handler as bytes, which
        # checks their size, depth and digits before parsing (the worker's own json.loads has no limits).
        env.update(TMPDIR=str(self._tmp_dir()), TEMP=str(self._tmp_dir()), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir), TS_DECODE_INPUT_REQUEST="false")
        env.pop("CTLOOP_STORE_DIR", None)
        if self.store_dir is not None:
            env["CTLOOP_STORE_DIR"] = str(self.store_dir)
        return env

    def _healthy(self) -> bool:
        """/ping also needs the inference key; the key file may be missing or half-written just after start."""
        try:
            key = self.keys()["inference"]
        except (OSError, KeyError, ValueError):
            return False
        answer = http.probe(f"{self.inference_url}/ping", headers={"Authorization": f"Bearer {key}"})
        try:
            return answer is not None and answer.status_code == 200 and answer.json().get("status") == "Healthy"
        except ValueError:
            return False

    @property
    def key_file(self) -> Path:
        """TorchServe's key_file.json; pipeline stages read it through CTLOOP_TS_KEY_FILE."""
        return self.work_dir / wire.KEY_FILE_NAME

    def keys(self) -> dict[str, str]:
        """The current management, inference and API keys from `<work_dir>/key_file.json`."""
        return wire.read_keys(self.key_file)

    def processes(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of this instance: launcher, Java frontend, workers."""
        return self._server.processes() if self._server is not None else []

    def stop(self, timeout: float = 20.0) -> None:
        """Stop gracefully (SIGTERM to the Java frontend), then kill what is left of the process
        group after `timeout` seconds."""
        if self._server is not None:
            self._server.stop(timeout)
        if self._short_tmp is not None:
            shutil.rmtree(self._short_tmp, ignore_errors=True)
            self._short_tmp = None

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
