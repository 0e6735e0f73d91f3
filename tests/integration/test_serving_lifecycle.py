"""LocalTorchServe start/stop: healthy after start, nothing left running after stop."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import pytest

import serving
from serving.archive import build_archive
from serving.client import TorchServeClient
from serving.server import LocalTorchServe, instance_config, free_ports

pytestmark = pytest.mark.serving


def alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            continue
    return left


def test_stop_leaves_no_java_or_worker_process(tmp_path, model_files) -> None:
    """Also in a work directory too deep for the workers' Unix socket names (108 bytes): they
    get a short temporary folder instead, removed on stop."""
    work = tmp_path / ("deep" * 25) / "ts"
    with LocalTorchServe(work) as server:
        archive = build_archive(model_files["champion"], "champion", "1", server.model_store, workers=2)
        client = TorchServeClient(server.inference_url, server.management_url, server.keys())
        client.register(archive.name, "champion", initial_workers=2)
        processes = server.processes()
        names = [process.name() for process in processes]
        assert "java" in names and names.count("python3.11") + names.count("python") >= 2
        socket_dir = Path(processes[names.index("java")].environ()["TMPDIR"])
        assert socket_dir.parent == Path(tempfile.gettempdir()) and socket_dir.name.startswith("ctloop-ts-")
        client.close()
    assert alive([process.pid for process in processes]) == []
    assert server.processes() == []
    assert not socket_dir.exists()


def test_instance_config_keeps_token_authorization_and_sets_ports(tmp_path) -> None:
    ports = free_ports()
    config = instance_config(ports, tmp_path)
    assert f"inference_address=http://127.0.0.1:{ports.inference}\n" in config
    assert f"grpc_management_port={ports.grpc_management}\n" in config
    assert "disable_token_authorization" not in config
    assert "enable_model_api=true\n" in config
    assert f"-Dlog4j.configurationFile=file://{serving.server.SHIPPED_LOG_CONFIG}" in config
    assert len(set(vars(ports).values())) == 5
