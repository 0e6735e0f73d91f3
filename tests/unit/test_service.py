"""`ctloop serve`'s parts that need no server: the schedule, the prediction counter, the start
decision (seed or resume), fixed ports, leftovers of a killed service, and the systemd unit."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest

from ctloop import wire
from ctloop.config import ConfigError, PipelineConfig
from ctloop.process import free_ports
from ctloop_app.ports import PortInUseError, StackPorts
from ctloop_app.schedule import parse_schedule
from ctloop_app.service import PredictionCounter, ServiceError, remove_all_but_newest, start_plan, stop_leftovers

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ctloop.service"
NOON = datetime(2026, 12, 6, 12, 0, 30, tzinfo=timezone.utc)


def test_a_cron_schedule_runs_at_its_next_time() -> None:
    schedule = parse_schedule("*/15 * * * *")
    assert schedule.next_after(None, NOON) == datetime(2026, 12, 6, 12, 15, tzinfo=timezone.utc)
    assert schedule.next_after(NOON, NOON + timedelta(minutes=20)) == datetime(2026, 12, 6, 12, 30, tzinfo=timezone.utc)


def test_an_interval_counts_from_the_last_start_and_never_piles_up() -> None:
    schedule = parse_schedule("every 30m")
    assert schedule.next_after(None, NOON) == NOON + timedelta(minutes=30)
    assert schedule.next_after(NOON, NOON + timedelta(minutes=5)) == NOON + timedelta(minutes=30)
    # A run that took longer than the interval is followed by the next at once, not by two.
    assert schedule.next_after(NOON, NOON + timedelta(minutes=50)) == NOON + timedelta(minutes=50)
    assert parse_schedule("every 2h").interval == timedelta(hours=2)
    assert parse_schedule("Every 90 s").interval == timedelta(seconds=90)


@pytest.mark.parametrize("text", ["hourly", "every 0m", "61 * * * *", "* * * *", "every 5 weeks"])
def test_a_bad_schedule_is_a_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match="schedule"):
        parse_schedule(text)


def test_the_shipped_schedule_is_hourly_and_run_every_predictions_off() -> None:
    config = PipelineConfig()
    assert parse_schedule(config.schedule).cron is not None and config.run_every_predictions == 0
    with pytest.raises(ConfigError, match="run_every_predictions"):
        PipelineConfig(run_every_predictions=-1)


def test_the_counter_counts_new_whole_lines_in_every_segment(tmp_path: Path) -> None:
    segments = tmp_path / wire.SEGMENTS_DIR
    segments.mkdir()
    first = segments / f"{wire.segment_stem(1, 'champion', '1', 'host-1')}.jsonl"
    first.write_bytes(b'{"a": 1}\n' * 5)
    counter = PredictionCounter(tmp_path)  # what was there before the service started is not new
    assert counter.count() == 0
    with open(first, "ab") as file:
        file.write(b'{"a": 2}\n{"a": 3}\n{"half')
    assert counter.count() == 2
    with open(first, "ab") as file:
        file.write(b'": 4}\n')
    assert counter.count() == 3  # the half line, counted once it is whole
    counter.reset()
    assert (counter.last, counter.count()) == (3, 0)
    (segments / f"{wire.segment_stem(2, 'champion', '1', 'host-2')}.jsonl").write_bytes(b'{"a": 5}\n')  # rotated
    first.unlink()  # pruned
    assert counter.count() == 1


def test_an_empty_store_counts_nothing(tmp_path: Path) -> None:
    counter = PredictionCounter(tmp_path)
    assert counter.count() == 0
    (tmp_path / wire.SEGMENTS_DIR).mkdir()
    (tmp_path / wire.SEGMENTS_DIR / f"{wire.segment_stem(1, 'champion', '2', 'h')}.jsonl").write_bytes(b"{}\n")
    assert counter.count() == 1


def _bootstrap_folder(folder: Path) -> Path:
    for path in ("models/champion.pt", "models/b1.pt", "models/b2.pt", "data/train.npz", "data/golden.npz"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(b"x")
    return folder


def test_an_empty_work_dir_is_seeded_from_models_and_needs_them(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="the first start needs --models"):
        start_plan(tmp_path / "work", None)
    models = _bootstrap_folder(tmp_path / "boot")
    assert start_plan(tmp_path / "work", models) == "seed"
    (models / "data" / "golden.npz").unlink()
    with pytest.raises(ServiceError, match="golden.npz"):
        start_plan(tmp_path / "work", models)


def test_a_live_work_dir_is_resumed_whatever_models_say(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "seed").mkdir(parents=True)
    (work / "seed" / "seeded").write_text("/somewhere\n")
    assert start_plan(work, None) == "resume"
    assert start_plan(work, tmp_path / "no-such-bootstrap") == "resume"


def test_an_interrupted_seed_is_refused_not_overwritten(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "mlflow").mkdir(parents=True)
    (work / "mlflow" / "mlflow.db").write_bytes(b"")
    with pytest.raises(ServiceError, match="stopped while seeding"):
        start_plan(work, _bootstrap_folder(tmp_path / "boot"))


def test_a_taken_port_is_named_before_anything_starts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        ports = StackPorts(*free_ports(5), mlflow=taken)
        with pytest.raises(PortInUseError, match=f"port {taken} \\(mlflow\\).*--mlflow-port"):
            ports.check_free()
    with pytest.raises(PortInUseError, match="must all differ"):
        StackPorts(inference=9000, management=9000).check_free()


def test_leftovers_of_a_killed_service_are_stopped_and_a_reused_pid_is_not(tmp_path: Path) -> None:
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = tmp_path / "processes.json"
        record.write_text(json.dumps([
            {"pid": left.pid, "created": psutil.Process(left.pid).create_time(), "group": False},
            # the same pid number as a process the service never started: its start time differs
            {"pid": stranger.pid, "created": psutil.Process(stranger.pid).create_time() - 100, "group": False}]))
        assert stop_leftovers(record) == ["stopped 1 process(es) an earlier service left running"]
        assert left.wait(timeout=5) is not None and stranger.poll() is None
        assert not record.exists()
    finally:
        for process in (left, stranger):
            process.kill()
            process.wait()


def test_a_killed_services_run_is_stopped_with_the_stages_it_started_after_the_record(tmp_path: Path) -> None:
    # A run (own process group) that starts a stage later, as kfp.local does: only the run is recorded.
    run = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                            "'-c', 'import time; time.sleep(60)']); print('started', flush=True); time.sleep(60)"],
                           start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "started"
        stage = psutil.Process(run.pid).children()[0]
        record = tmp_path / "processes.json"
        record.write_text(json.dumps([{"pid": run.pid, "created": psutil.Process(run.pid).create_time(), "group": True}]))
        assert stop_leftovers(record) == ["stopped 2 process(es) an earlier service left running"]
        assert run.wait(timeout=5) is not None
        with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie its new parent has yet to reap
            assert stage.status() == psutil.STATUS_ZOMBIE
    finally:
        run.kill()
        run.wait()
        run.stdout.close()


def test_only_the_newest_files_and_folders_are_kept(tmp_path: Path) -> None:
    paths = [tmp_path / "old.log", tmp_path / "older-run", tmp_path / "new.log", tmp_path / "newer-run"]
    for age, path in zip((30, 40, 10, 5), paths):
        if path.suffix:
            path.write_text("x")
        else:
            (path / "task").mkdir(parents=True)
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    remove_all_but_newest(tmp_path.iterdir(), 2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.log", "newer-run"]


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read(UNIT)
    return unit


def test_the_systemd_unit_runs_serve_in_the_foreground_and_stops_it_with_sigterm() -> None:
    service = _unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/bin/ctloop") and command[1] == "serve"
    assert "--work-dir" in command and "--models" in command and "--config" in command
    assert service["Type"] == "simple"  # serve stays in the foreground
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"  # ctloop stops its servers
    assert "130" in service["SuccessExitStatus"].split()  # how ctloop exits on SIGTERM
    assert service["Restart"] == "on-failure"
    # Abandoning a run (10 s) and stopping TorchServe and MLflow (20 s each at most) fit.
    assert int(service["TimeoutStopSec"]) >= 60
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"
