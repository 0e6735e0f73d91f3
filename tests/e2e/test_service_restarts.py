"""`ctloop serve` as a service: started with the systemd unit's ExecStart the way systemd runs it
(foreground; SIGTERM to the main process, KillMode=mixed), it seeds the work directory, retrains
on drifted traffic and deploys on its schedule; stopped with SIGTERM, killed with kill -9 in the
middle of a run, and restarted, it resumes MLflow's champion with its history and never goes
back to the bootstrap models. What is simulated: systemd itself (the test starts the command and
sends the signals); TorchServe, MLflow and the pipeline runs are real."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
import yaml

from ctloop import registry
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop.process import free_ports
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop.wire import read_keys
from ctloop_app.cli import main
from ctloop_app.operate import Fleet
from ctloop_app.traffic import Traffic
from pipeline_support import DEPLOYING_GOLDEN_REGRESSION
from serving.client import TorchServeClient

pytestmark = [pytest.mark.serving, pytest.mark.slow]

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ctloop.service"
WINDOW = 150
PORT_FLAGS = ("--inference-port", "--management-port", "--metrics-port", "--grpc-inference-port",
              "--grpc-management-port", "--mlflow-port")


class Service:
    """A `ctloop serve` process, its output collected line by line."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180) -> str:
        return _until(lambda: next((line for line in self.lines if text in line), None), timeout,
                      lambda: f"no {text!r} from ctloop serve; it said:\n" + "\n".join(self.lines[-40:]))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)  # the pipe closes when the last process holding it (a server) ends
        if not self.reader.is_alive():
            self.process.stdout.close()
        return code


def _until(found: Callable[[], object], timeout: float, failure: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.5)
    raise AssertionError(failure())


def _exec_start(work: Path, models: Path, config: Path) -> list[str]:
    """The unit's ExecStart with this machine's paths: what systemd would run."""
    unit = UNIT.read_text()
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    replaced = {"/opt/ctloop/.venv/bin/ctloop": str(Path(sys.executable).with_name("ctloop")),
                "/var/lib/ctloop/work": str(work), "/var/lib/ctloop/bootstrap": str(models),
                "/etc/ctloop/ctloop.yaml": str(config)}
    return [replaced.get(word, word) for word in shlex.split(line.removeprefix("ExecStart="))]


def _state(work: Path) -> dict:
    path = work / "service" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _play(work: Path, boot, seed: int) -> None:
    """A window of blurred parts through the service's champion, as a camera client would send them."""
    fleet = Fleet.load(work)
    client = TorchServeClient(fleet.inference_url, fleet.management_url, read_keys(fleet.key_file))
    line = ProductionLine(ImageSet.load(boot.production_pool), seed=seed, drift=DriftSpec("blur", 1.0, start=0))
    Traffic(client, work / "store", audit_share=0.3, seed=seed).send(line.take(WINDOW))
    client.close()


def _left_running(work: Path) -> list[str]:
    """Processes whose command line names the work directory (servers, workers, runs)."""
    left = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(work) in part for part in process.info["cmdline"] or []):
            left.append(" ".join(process.info["cmdline"])[:200])
    return left


def test_the_service_retrains_on_schedule_and_resumes_after_sigterm_and_kill_9(boot, tmp_path: Path) -> None:
    work, models = tmp_path / "work", boot.model_files["champion"].parent.parent
    config = tmp_path / "ctloop.yaml"
    # This test is about the service: its cycle must deploy, so the golden-regression bar is the
    # one for such cycles (pipeline_support.DEPLOYING_GOLDEN_REGRESSION).
    config.write_text(yaml.safe_dump({**PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30,
                                                       max_golden_regression=DEPLOYING_GOLDEN_REGRESSION).as_dict(),
                                      "schedule": "every 3s"}))
    ports = [word for flag, port in zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))) for word in (flag, str(port))]

    # First start, as systemd runs the unit: seeds the empty work directory from --models.
    first = Service(_exec_start(work, models, config) + ports)
    first.wait_for("seeded")
    first.wait_for("next run")
    assert _state(work)["schedule"] == "every 3s"
    first.wait_for("run skipped: no new prediction")  # nothing logged yet: nothing to judge
    _play(work, boot, seed=1)
    first.wait_for("run succeeded: champion v1 -> v2")
    tracking_uri = Fleet.load(work).tracking_uri
    assert registry.get_version_by_alias("ctloop-champion", "champion", tracking_uri) == "2"
    assert first.stop() in (0, 130)  # systemd's stop; the unit counts 130 as success
    assert _left_running(work) == []

    # Restarted without --models, then with them (as the unit always passes them): it resumes v2.
    second = Service(_exec_start(work, models, config) + ports)
    resumed = second.wait_for("resumed")
    assert "champion v2" in resumed and "not used: it seeds an empty work directory only" in resumed
    assert main(["status", "--stack", str(work)]) == 0  # serving agrees with the registry

    # kill -9 in the middle of a run: nothing stops the servers or the run's stages.
    _play(work, boot, seed=2)
    _until(lambda: (_state(work).get("running") or {}).get("pid"), 120, lambda: f"no run started: {_state(work)}")
    second.stop(signal.SIGKILL)
    assert _left_running(work)  # TorchServe, MLflow and the run outlive the service

    third = Service([*_exec_start(work, models, config)[:2], "--work-dir", str(work), "--config", str(config), *ports])
    third.wait_for("an earlier service left running")
    assert "champion v2" in third.wait_for("resumed")
    assert main(["status", "--stack", str(work)]) == 0
    assert registry.get_version_by_alias("ctloop-champion", "champion", tracking_uri) == "2"
    versions = {version.version for version in registry.client(tracking_uri).search_model_versions(
        "name='ctloop-champion'")}
    assert "1" in versions  # history kept; the seed was never registered again
    assert third.stop() in (0, 130)
    assert _left_running(work) == []
