"""Tasks forked from the warm forkserver (ctloop_app.warm_tasks), run through kfp.local as the
pipeline's tasks are: each is a process of its own, with the environment, working directory and
module state a fresh process would have, and kfp.local sees its output, exit status and outputs as
it would a subprocess's. Nothing is simulated."""

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
from kfp import dsl

from ctloop_app import warm_tasks
from ctloop_app.local_run import LocalRun, run_locally


def probe(mark: str) -> str:
    """What a task sees as it starts; then it leaves `mark` in a module for a later task to find."""
    import json
    import os
    import sys

    preloaded = sorted({"torch", "mlflow", "components.train.logic"} & set(sys.modules))
    import ctloop.config

    seen = {"pid": os.getpid(), "parent": os.getppid(), "env": os.environ.get("CTLOOP_PROBE"),
            "cwd": os.getcwd(), "preloaded": preloaded, "module": __file__,
            "left_by_an_earlier_task": getattr(ctloop.config, "probe_mark", None),
            "name": open("/proc/self/comm").read().strip()}
    ctloop.config.probe_mark = mark
    print(f"probe {mark} printed this")
    return json.dumps(seen)


def crash(how: str) -> str:
    """Fails the way a stage can: an exception, or killed with SIGKILL."""
    import os
    import signal

    print(f"module at {__file__}", flush=True)
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("the probe failed on purpose")


def first_use(database: str) -> str:
    """What stages do first in a local run: open the SQLite registry, take a training step; the
    modules that imported beyond what the task started with."""
    import json
    import sys

    before = set(sys.modules)
    import torch

    from ctloop import registry

    registry.client(f"sqlite:///{database}").search_registered_models()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 2)).sum().backward()
    optimizer.step()
    return json.dumps(sorted(set(sys.modules) - before))


def sleeper(seconds: float, started: str) -> str:
    import time
    from pathlib import Path

    Path(started).write_text(__file__)
    time.sleep(seconds)
    return "woke up"


def _run(function: Callable, marks: list[str], root: Path) -> LocalRun:
    """`function` once per mark, one task after the other."""
    op = dsl.component(function, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline(name="warm-tasks")
    def pipeline():
        previous = None
        for mark in marks:
            task = op(**{{probe: "mark", crash: "how", first_use: "database"}[function]: mark})
            if previous is not None:
                task.after(previous)
            previous = task

    return run_locally(pipeline, {}, root)


def _seen(run: LocalRun, task: str) -> dict:
    return json.loads(run.task(task).parameters["Output"])


def test_each_task_is_a_fresh_fork_with_the_environment_of_its_run(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTLOOP_PROBE", "first run")
    first_run = _run(probe, ["first", "second"], tmp_path / "root")
    monkeypatch.setenv("CTLOOP_PROBE", "second run")
    second_run = _run(probe, ["third"], tmp_path / "root")
    assert first_run.succeeded and second_run.succeeded, (first_run.error, second_run.error)

    first, second, third = _seen(first_run, "probe"), _seen(first_run, "probe-2"), _seen(second_run, "probe")
    assert len({first["pid"], second["pid"], third["pid"], os.getpid()}) == 4
    forkserver = psutil.Process(first["parent"])
    assert second["parent"] == third["parent"] == forkserver.pid and forkserver.ppid() == os.getpid()
    assert [seen["env"] for seen in (first, second, third)] == ["first run", "first run", "second run"]
    for seen in (first, second, third):
        assert seen["preloaded"] == ["components.train.logic", "mlflow", "torch"]
        assert seen["left_by_an_earlier_task"] is None  # the first task's change died with it
        assert seen["cwd"] == str(tmp_path) and seen["name"] == "probe"
        assert not Path(seen["module"]).exists()  # kfp's temporary module of the task, removed
    printed = capfd.readouterr().out
    assert "probe first printed this" in printed and "probe third printed this" in printed


def test_what_stages_import_on_first_use_is_preloaded(tmp_path, mlflow_schema) -> None:
    """torch's optimizers import torch._dynamo at their first step, ctloop.registry MLflow's SQL
    stores when it opens its first client (ctloop_app.first_use): 1.2 s and 0.7 s a task if the
    forkserver left them to each task."""
    database = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_schema, database)
    run = _run(first_use, [str(database)], tmp_path / "root")
    assert run.succeeded, run.error
    imported = json.loads(run.task("first-use").parameters["Output"])
    # Left to the task: about 16 small modules (SQLAlchemy's SQLite dialect, MLflow's workspace
    # stores), 0.08 s; without ctloop_app.first_use in the preload it imported 1,074.
    assert len(imported) < 30, " ".join(imported)


def test_the_preload_imports_with_warnings_as_errors() -> None:
    """The forkserver imports its preload with the interpreter flags of the process running the
    pipeline: under `-W error`, a warning while importing (SQLAlchemy's about MLflow's SQL stores,
    unless ctloop.registry silences it) would stop the forkserver, and every task with it."""
    done = subprocess.run([sys.executable, "-W", "error", "-c", "import " + ", ".join(warm_tasks.stage_modules())],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("how", ["raised", "killed"])
def test_a_task_that_fails_fails_its_run(tmp_path, capfd, how: str) -> None:
    run = _run(crash, [how], tmp_path / "root")
    assert not run.succeeded and run.task("crash").status == "FAILURE"
    assert "Inner task failed: 'crash'" in run.error
    printed = capfd.readouterr().out
    assert not _module_folder(printed).exists()  # a killed task leaves no temporary module either
    if how == "raised":
        assert "RuntimeError: the probe failed on purpose" in printed


def _module_folder(printed: str) -> Path:
    return Path(re.search(r"module at (\S+)", printed).group(1)).parent


def test_an_abandoned_run_stops_the_task_it_waits_for(tmp_path) -> None:
    """Ctrl-C or SIGTERM in the process running the pipeline (an exception where it waits for the
    task's output) stops the forked task too, as it would a subprocess of its own."""
    started = tmp_path / "started"
    executor_input = {"inputs": {"parameterValues": {"seconds": 60, "started": str(started)}},
                      "outputs": {"parameters": {"Output": {"outputFile": str(tmp_path / "Output")}},
                                  "outputFile": str(tmp_path / "executor_output.json")}}
    task = warm_tasks.Task(inspect.getsource(sleeper), ("--executor_input", json.dumps(executor_input),
                                                       "--function_to_execute", "sleeper"))
    running: list[int] = []

    def interrupt_once_running() -> None:
        deadline = time.monotonic() + 60
        while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        running.extend(warm_tasks.running_tasks())
        os.kill(os.getpid(), signal.SIGUSR1)

    def abandon(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, abandon)
    watcher = threading.Thread(target=interrupt_once_running)
    warm_tasks.install()
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            warm_tasks.run_forked(task, dict(os.environ))
    finally:
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
    assert len(running) == 1 and not psutil.pid_exists(running[0])
    assert warm_tasks.running_tasks() == {} and not (tmp_path / "executor_output.json").exists()
    assert not Path(started.read_text()).parent.exists()  # the task's temporary module, removed
