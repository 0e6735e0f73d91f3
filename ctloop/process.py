"""A server in its own process group: start it, wait until it is ready, stop all of it.

`ServerProcess` is what LocalTorchServe, the MLflow tracking server and the benchmark's uvicorn
have in common. The command runs in a new session (so a new process group whose id is the
leader's pid) with its own log file (stdout and stderr), working directory and environment.
`start()` returns once `ready()` says so, and raises `ServerStartError` with the tail of the log
if the leader exits first or `start_timeout` passes; either way nothing is left running.

`stop()` stops the whole group: SIGTERM first (see `terminate`), a wait of up to `grace` seconds
for every process of the group to end, then SIGKILL to whatever is left; the leader is reaped. Until stop() runs, an
atexit hook stops the group when the interpreter exits, and SIGTERM (which would kill the Python
process without running atexit) is turned into SystemExit, so `kill <pid>` of the parent stops
its servers too. That handler is installed only from the main thread and only if SIGTERM had its
default disposition; the previous disposition comes back when the last running group stops.

Which process gets the first SIGTERM (`terminate`):
- "leader": the leader stops its own children (uvicorn's supervisor stops its workers).
- "children": the leader is a launcher that waits for its children and does not forward
  signals (`torchserve --foreground`): its children get SIGTERM, it exits when they do.
- "group": every process of the group, for trees whose leader does not stop all of them.
A parent that exits before its child orphans the child to PID 1, which in some containers never
reaps it, so "leader" and "children" (parents outlive their children) are preferred.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Callable, Literal, Mapping, Sequence

import psutil

__all__ = ["ServerProcess", "ServerStartError", "free_port", "free_ports"]

Terminate = Literal["leader", "children", "group"]
TAIL_LINES = 30
TAIL_CHARS = 4000


class ServerStartError(RuntimeError):
    """The server exited at start or was not ready in time; the message ends with its log's tail."""


def free_port() -> int:
    """One port free on 127.0.0.1: for a server, or as a port nobody listens on."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different ports that the OS reports free on 127.0.0.1 (held open together)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ServerProcess:
    """One command as a process group; a context manager, or call start()/stop().

    Args:
        command: the program and its arguments (no shell).
        log_file: receives the group's stdout and stderr; its parent directory is created.
        ready: called every `poll` seconds after the launch; True when the server is ready.
            Anything else means not yet; a string says what is missing and ends up in the
            timeout error. Exceptions propagate (after the group is stopped).
        name: the server's name in error messages.
        start_timeout: seconds to wait for `ready`.
        cwd: working directory of the command.
        env: the command's whole environment; None inherits this process's.
        append_log: append to `log_file` (True) or truncate it at each start.
        terminate: which processes get the first SIGTERM: "leader", "children" or "group".
        error: the exception class raised when the start fails (a ServerStartError).
        poll: seconds between two readiness checks.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_file: str | Path,
        ready: Callable[[], bool | str],
        *,
        name: str | None = None,
        start_timeout: float = 60.0,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        append_log: bool = True,
        terminate: Terminate = "leader",
        error: type[ServerStartError] = ServerStartError,
        poll: float = 0.2,
    ) -> None:
        if terminate not in ("leader", "children", "group"):
            raise ValueError(f"terminate must be 'leader', 'children' or 'group', got {terminate!r}")
        self.command = [str(part) for part in command]
        self.log_file = Path(log_file)
        self.ready = ready
        self.name = name or Path(self.command[0]).name
        self.start_timeout = start_timeout
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.append_log = append_log
        self.terminate = terminate
        self.error = error
        self.poll = poll
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def pid(self) -> int | None:
        """The leader's pid, which is also the process group's id; None when not started."""
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        """Started, not stopped, and the leader has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> "ServerProcess":
        """Launch the command and return once `ready()` is True; on any failure stop the group."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already started (pid {self.process.pid}); stop() it first")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab" if self.append_log else "wb") as log:
            self._log_start = log.tell()
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        atexit.register(self.stop)
        _guard_sigterm()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        missing = ""
        while True:
            code = self.process.poll()
            if code is not None:
                raise self.error(f"{self.name} exited with code {code} at start; {self._tail_text()}")
            answer = self.ready()
            if answer is True:
                return
            missing = answer if isinstance(answer, str) else missing
            if time.monotonic() >= deadline:
                detail = f" ({missing})" if missing else ""
                raise self.error(f"{self.name} not ready after {self.start_timeout:g} s{detail}; {self._tail_text()}")
            time.sleep(self.poll)

    def _tail_text(self) -> str:
        tail = self.log_tail()
        return f"last lines of {self.log_file}:\n{tail}" if tail else f"{self.log_file} is empty"

    def log_tail(self, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
        """The last `lines` lines (at most `chars` characters) written since the last start."""
        try:
            with open(self.log_file, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_start, size - chars))
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of the group: the leader and all it started."""
        if self.process is None:
            return []
        group = self.process.pid
        members = []
        for process in psutil.process_iter(["status"]):
            try:
                if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                    members.append(process)
            except (ProcessLookupError, psutil.Error):
                continue
        return members

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (see `terminate`), wait up to `grace` seconds for the whole group to end,
        SIGKILL what is left, reap the leader. Does nothing if not started; safe to call twice."""
        if self.process is None:
            return
        leader = self.process
        deadline = time.monotonic() + grace
        if leader.returncode is None:
            # Not reaped yet (maybe a zombie), so the group id cannot have been reused: killpg is safe.
            for process in self._first_to_terminate():
                with contextlib.suppress(psutil.Error):
                    process.terminate()
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGKILL)
        else:
            # The leader exited at start and was reaped: signal what is left one by one (psutil
            # checks that a pid still names the same process).
            left = self.processes()
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.terminate()
            _, left = psutil.wait_procs(left, timeout=max(deadline - time.monotonic(), 0))
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        leader.wait()
        self.process = None
        atexit.unregister(self.stop)
        _release_sigterm()

    def _first_to_terminate(self) -> list[psutil.Process]:
        assert self.process is not None
        if self.terminate == "group":
            return self.processes()
        try:
            leader = psutil.Process(self.process.pid)
            return leader.children() if self.terminate == "children" else [leader]
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# SIGTERM -> SystemExit while at least one group runs (counted, so that stopping one server does
# not unprotect another that still runs).
_sigterm_lock = threading.Lock()
_running_groups = 0
_previous_sigterm: object = None
_installed = False


def _guard_sigterm() -> None:
    global _running_groups, _previous_sigterm, _installed
    with _sigterm_lock:
        _running_groups += 1
        if (not _installed and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            _previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
            _installed = True


def _release_sigterm() -> None:
    global _running_groups, _installed
    with _sigterm_lock:
        _running_groups = max(_running_groups - 1, 0)
        if _running_groups == 0 and _installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:  # nobody replaced ours since
                signal.signal(signal.SIGTERM, _previous_sigterm)
            _installed = False


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
