"""ctloop.process.ServerProcess with real process groups: `python -m http.server` and small
Python programs that die, hang, ignore SIGTERM or start children of their own."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from ctloop import http
from ctloop.process import ServerProcess, ServerStartError, free_port

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parents[2]


def http_server(port: int) -> list[str]:
    return [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def answers(url: str) -> bool:
    answer = http.probe(url, timeout=1)
    return answer is not None and answer.status_code == 200


def alive(pids: list[int]) -> list[int]:
    """The pids that still name a running (non-zombie) process."""
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            continue
    return left


def program(source: str) -> list[str]:
    return [PYTHON, "-c", textwrap.dedent(source)]


def test_public_names() -> None:
    from ctloop import process

    assert set(process.__all__) == {"ServerProcess", "ServerStartError", "free_port", "free_ports"}


def test_ready_then_stop_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with ServerProcess(http_server(port), tmp_path / "server.log", lambda: answers(url), cwd=tmp_path) as server:
        assert answers(url)
        pids = [process.pid for process in server.processes()]
        assert pids == [server.pid]
    assert alive(pids) == []
    assert server.processes() == [] and server.pid is None
    assert not answers(url)
    server.stop()  # a second stop does nothing
    assert "GET / HTTP/1.1" in (tmp_path / "server.log").read_text()


def test_a_launcher_and_its_child_stop_without_orphans(tmp_path: Path) -> None:
    """terminate="children": the launcher forwards nothing and waits for its child (as
    `torchserve --foreground` does); its child gets SIGTERM, the launcher reaps it and exits."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    launcher = program(f"""
        import signal, subprocess, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a launcher that forwards nothing
        child = subprocess.Popen({http_server(port)!r}, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        sys.exit(child.wait())
    """)
    server = ServerProcess(launcher, tmp_path / "launcher.log", lambda: answers(url), terminate="children")
    with server:
        members = server.processes()
        assert len(members) == 2
        started = time.monotonic()
    assert time.monotonic() - started < 10, "the child's SIGTERM stopped the group, not the SIGKILL"
    assert alive([process.pid for process in members]) == []


def test_a_leader_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = program("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(120)
    """)
    log = tmp_path / "stubborn.log"
    server = ServerProcess(stubborn, log, lambda: "ready" in log.read_text()).start()
    pid = server.pid
    started = time.monotonic()
    server.stop(grace=1)
    assert 1 <= time.monotonic() - started < 5
    assert alive([pid]) == []


def test_a_server_that_dies_at_start_says_why(tmp_path: Path) -> None:
    dying = program("""
        import sys
        print("loading config.properties", flush=True)
        print("error: no port configured", file=sys.stderr)
        sys.exit(3)
    """)
    log = tmp_path / "dying.log"
    log.write_text("an old run's line\n")
    server = ServerProcess(dying, log, lambda: False, name="dying-server", start_timeout=30)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"^dying-server exited with code 3 at start; last lines of .*dying\.log:\n"
                                                r"loading config.properties\nerror: no port configured$"):
        server.start()
    assert time.monotonic() - started < 10
    assert server.process is None


def test_a_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    hanging = program("""
        import time
        print("still loading", flush=True)
        time.sleep(120)
    """)
    log = tmp_path / "hanging.log"

    class Failure(ServerStartError):
        pass

    pids: set[int] = set()

    def not_ready() -> bool | str:
        pids.add(server.pid)
        return "model not loaded" if "still" in log.read_text() else False

    server = ServerProcess(hanging, log, not_ready, name="hanging-server", start_timeout=1, error=Failure)
    with pytest.raises(Failure, match=r"^hanging-server not ready after 1 s \(model not loaded\); "
                                      r"last lines of .*hanging\.log:\nstill loading$"):
        server.start()
    assert server.process is None
    assert len(pids) == 1 and alive(list(pids)) == []


def test_sigterm_becomes_systemexit_while_a_group_runs(tmp_path: Path) -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("something else handles SIGTERM in this test process")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    first = ServerProcess(http_server(port), tmp_path / "a.log", lambda: answers(url)).start()
    second_port = free_port()
    second_url = f"http://127.0.0.1:{second_port}/"
    second = ServerProcess(http_server(second_port), tmp_path / "b.log", lambda: answers(second_url)).start()
    try:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        first.stop()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "the second server is still running"
    finally:
        first.stop()
        second.stop()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("ending", ["returns", "gets SIGTERM"])
def test_the_group_stops_when_its_python_parent_ends(tmp_path: Path, ending: str) -> None:
    """atexit stops a group its program forgot to stop; SIGTERM to the program runs atexit too."""
    port = free_port()
    parent = program(f"""
        import sys, time
        from ctloop import http
        from ctloop.process import ServerProcess
        server = ServerProcess({http_server(port)!r}, {str(tmp_path / "child.log")!r},
                               lambda: http.probe("http://127.0.0.1:{port}/") is not None)
        server.start()
        print(server.pid, flush=True)
        if {ending == "gets SIGTERM"}:
            time.sleep(120)
    """)
    with subprocess.Popen(parent, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as running:
        assert running.stdout is not None
        group = int(running.stdout.readline())
        if ending == "gets SIGTERM":
            assert alive([group]) == [group]
            running.send_signal(signal.SIGTERM)
        code = running.wait(30)
    assert code == (128 + signal.SIGTERM if ending == "gets SIGTERM" else 0)
    assert alive([group]) == []
    assert not answers(f"http://127.0.0.1:{port}/")
