"""Start and stop a local TorchServe with its own ports, work dir, model store and keys.

Token authorization stays on. At start TorchServe writes `key_file.json` into its working
directory (here `<work_dir>/key_file.json`) with three keys: `management` (register, scale,
set-default, unregister), `inference` (predictions) and `API` (to regenerate the other two).
`LocalTorchServe.keys()` reads it; pass the result to `TorchServeClient`, which sends
`Authorization: Bearer <key>`. Keys expire after `token_expiration_min` (serving/config.properties).

TorchServe runs with `--foreground` in its own session, so the launcher, the Java frontend and
its Python workers form one process group that stop() signals as a whole. Each instance also
gets its own TMPDIR, because `torchserve` keeps a pid file in the temp dir and refuses to start
a second instance that shares it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil
import requests

from ctloop import wire

SHIPPED_CONFIG = Path(__file__).with_name("config.properties")
SHIPPED_LOG_CONFIG = Path(__file__).with_name("log4j2.xml")
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


class TorchServeStartError(RuntimeError):
    """TorchServe did not become healthy; the message points at its log."""


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


def free_port() -> int:
    """One port free on 127.0.0.1: for another server, or as a port nobody listens on."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """Ports the OS reports free (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
            f"-Dlog4j.configurationFile=file://{SHIPPED_LOG_CONFIG.resolve()}",
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
        self.process: subprocess.Popen[bytes] | None = None
        self._previous_sigterm: object = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    def start(self) -> "LocalTorchServe":
        """Launch TorchServe and return once /ping says Healthy; stop it again if it never does."""
        for directory in (self.model_store, self.log_dir, self.work_dir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "config.properties"
        config.write_text(instance_config(self.ports, self.model_store, self.config_overrides))
        self.key_file.unlink(missing_ok=True)
        command = [
            str(Path(sys.executable).with_name("torchserve")), "--start", "--foreground",
            "--ts-config", str(config), "--model-store", str(self.model_store), "--ncs",
        ]
        with open(self.log_dir / "stdout.log", "ab") as output:
            self.process = subprocess.Popen(
                command, cwd=self.work_dir, env=self._environment(), stdout=output,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        atexit.register(self.stop)
        self._stop_on_sigterm()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
        env.update(TMPDIR=str(self.work_dir / "tmp"), TEMP=str(self.work_dir / "tmp"), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir))
        env.pop("CTLOOP_STORE_DIR", None)
        if self.store_dir is not None:
            env["CTLOOP_STORE_DIR"] = str(self.store_dir)
        return env

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise TorchServeStartError(f"TorchServe exited at start; see {self.log_dir / 'stdout.log'}")
            if self.key_file.exists() and self._healthy():
                return
            time.sleep(0.2)
        raise TorchServeStartError(f"TorchServe not healthy after {self.start_timeout:.0f}s; see {self.log_dir}")

    def _healthy(self) -> bool:
        """/ping also needs the inference key; the key file may be half-written just after start."""
        try:
            answer = requests.get(
                f"{self.inference_url}/ping", timeout=2,
                headers={"Authorization": f"Bearer {self.keys()['inference']}"},
            )
        except (requests.ConnectionError, OSError, KeyError, ValueError):
            return False
        return answer.status_code == 200 and answer.json().get("status") == "Healthy"

    @property
    def key_file(self) -> Path:
        """TorchServe's key_file.json; pipeline stages read it through CTLOOP_TS_KEY_FILE."""
        return self.work_dir / wire.KEY_FILE_NAME

    def keys(self) -> dict[str, str]:
        """The current management, inference and API keys from `<work_dir>/key_file.json`."""
        return wire.read_keys(self.key_file)

    def processes(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of this instance: launcher, Java frontend, workers."""
        if self.process is None:
            return []
        members = []
        for process in psutil.process_iter(["status"]):
            try:
                if os.getpgid(process.pid) == self.process.pid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    members.append(process)
            except (ProcessLookupError, psutil.Error):
                continue
        return members

    def stop(self, timeout: float = 20.0) -> None:
        """Stop gracefully, then kill what is left of the process group after `timeout`.

        SIGTERM goes to the Java frontend first: it stops and reaps its workers and is reaped by
        the launcher, which exits. Signalling the whole group at once would orphan them to PID 1,
        which in some containers never reaps them (defunct processes)."""
        if self.process is None:
            return
        group = self.process.pid
        for process in self.processes():
            if process.pid != group:
                with contextlib.suppress(psutil.Error):
                    if process.ppid() == group:
                        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self._signal_group(group, signal.SIGKILL)
        self.process.wait()
        self.process = None
        atexit.unregister(self.stop)
        self._restore_sigterm()

    @staticmethod
    def _signal_group(group: int, signum: signal.Signals) -> None:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return

    def _stop_on_sigterm(self) -> None:
        """SIGTERM would kill this process without running atexit; turn it into SystemExit so
        stop() runs (only from the main thread, and only if nobody else handles SIGTERM)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
