"""kfp.local tasks forked from a warm interpreter instead of started cold.

kfp.local's SubprocessRunner starts every task as a fresh `python -m kfp.dsl.executor_main`,
which imports kfp and the stage before it does any work: 0.6 s for the light stages, 2-4 s where
torch and mlflow come in, about 20 of the 30 CPU-s a local cycle costs. Here a multiprocessing
forkserver imports all of that once per process that runs pipelines, and each task is a fork of
it: its own process (pid, environment, working directory, exit status, a `ps` name of its
component function), starting from the modules as imported and nothing a previous task did.
What kfp.local does around the task (executor input, outputs, statuses, logs) is unchanged.
As with any multiprocessing start method but fork, each task first imports the main module of
the process that runs the pipeline, as `__mp_main__` (not when it is a package's `__main__`,
as with `python -m`): a script that runs pipelines must keep its work under
`if __name__ == "__main__":`, as the `ctloop` command does, or every task runs it again.

kfp.local has no hook for this: `install()` replaces the module function its SubprocessRunner
handler calls to start a task, for commands in the form kfp 2.17 compiles Python components to
(`command_task`); anything else runs as kfp.local would run it.
"""

import ast
import contextlib
import importlib.util
import multiprocessing
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kfp.local import subprocess_task_handler

from kubeflow_pipeline.images import STAGES

_EXECUTOR = "-m kfp.dsl.executor_main"
_MODULE_FILE = '"$program_path/ephemeral_component.py"'
_FORKSERVER = multiprocessing.get_context("forkserver")
_RUNNING: dict[int, str] = {}
_installed = False


@dataclass(frozen=True)
class Task:
    """A Python component's task: its source (kfp writes it to a temporary module) and the
    executor's arguments (`--executor_input ... --function_to_execute NAME`)."""

    source: str
    arguments: tuple[str, ...]

    @property
    def function(self) -> str:
        return self.arguments[self.arguments.index("--function_to_execute") + 1]


def command_task(full_command: list[str]) -> Task | None:
    """The task of `sh -ec SCRIPT SOURCE ARGS...` where SCRIPT writes SOURCE to a module and runs
    the kfp executor on it, as kfp compiles a Python component; None for any other command."""
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"]:
        return None
    script = full_command[2]
    if _EXECUTOR not in script or _MODULE_FILE not in script or "--function_to_execute" not in full_command:
        return None
    return Task(full_command[3], tuple(full_command[4:]))


def deferred_imports(stage: str) -> list[ast.Import | ast.ImportFrom]:
    """The import statements inside functions of the stage's modules, component.py first: the
    component functions' bodies (what kfp runs in a task) and the imports a logic function
    defers; importing the modules runs neither."""
    folder = Path(importlib.util.find_spec(f"components.{stage}").submodule_search_locations[0])
    statements = []
    for path in [folder / "component.py", *sorted(set(folder.glob("*.py")) - {folder / "component.py"})]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                statements += [inner for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))]
    return statements


def stage_modules() -> list[str]:
    """What the forkserver imports: kfp's executor, every module a stage's task imports (its
    `deferred_imports`: component functions import in their body; logic modules defer e.g.
    ctloop.registry, and with it mlflow), and what those import on first use
    (ctloop_app.first_use)."""
    modules = ["kfp.dsl.executor_main", __name__]
    for stage in STAGES:
        modules += [module for node in deferred_imports(stage) for module in _imported(node)]
    return list(dict.fromkeys([*modules, "ctloop_app.first_use"]))


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads; for `from package import name`, `package.name` too
    where that is a module (`from ctloop import registry`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    if importlib.util.find_spec(node.module).submodule_search_locations is None:
        return [node.module]
    candidates = (f"{node.module}.{alias.name}" for alias in node.names)
    return [node.module, *(name for name in candidates if importlib.util.find_spec(name))]


def install() -> None:
    """Make kfp.local's SubprocessRunner fork Python component tasks from the warm forkserver
    (started, and `stage_modules()` imported, by this process's first task). Once per process, as
    ctloop_app.kfp_docker's fix is: kfp.local's settings are process-wide anyway."""
    global _installed
    if _installed:
        return
    cold = subprocess_task_handler.run_local_subprocess

    def run(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        task = command_task(full_command)
        if task is None:
            return cold(full_command, env_vars)
        return run_forked(task, {**os.environ, **(env_vars or {})})

    _FORKSERVER.set_forkserver_preload(stage_modules())
    subprocess_task_handler.run_local_subprocess = run
    _installed = True


def running_tasks() -> dict[int, str]:
    """The tasks this process has running now: pid -> component function."""
    return dict(_RUNNING)


def run_forked(task: Task, environment: dict[str, str]) -> int:
    """Run `task` in a fork of the forkserver, printing its output line by line as kfp.local does;
    its exit status (negative: killed by that signal)."""
    ours, theirs = socket.socketpair()
    program_path = tempfile.TemporaryDirectory(prefix="ctloop-task-")  # ours: a killed task leaves none
    process = _FORKSERVER.Process(target=_execute, args=(task, environment, os.getcwd(), program_path.name, theirs),
                                  name=task.function)
    with ours, program_path:
        process.start()
        theirs.close()
        _RUNNING[process.pid] = task.function
        try:
            with ours.makefile("r", encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    print(line, end="")
            print("\n")
        except BaseException:
            process.terminate()  # the run was abandoned (Ctrl-C, SIGTERM), and so is its task
            raise
        finally:
            process.join()
            del _RUNNING[process.pid]
    return process.exitcode


def _execute(task: Task, environment: dict[str, str], cwd: str, program_path: str, output: socket.socket) -> None:
    """In the forked child: become the task's process, then run kfp's executor on its module
    (written to `program_path`, which the parent removes however the task ends)."""
    for stream in (1, 2):
        os.dup2(output.fileno(), stream)
    output.close()
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    os.environ.clear()
    os.environ.update({**environment, "_KFP_RUNTIME": "true"})
    os.chdir(cwd)
    with contextlib.suppress(OSError):  # Linux: `ps` and psutil name the task's function
        Path("/proc/self/comm").write_text(task.function[:15])
    from kfp.dsl import executor_main

    module = Path(program_path) / "ephemeral_component.py"
    module.write_text(task.source)
    sys.argv = [executor_main.__file__, "--component_module_path", str(module), *task.arguments]
    executor_main.executor_main()
