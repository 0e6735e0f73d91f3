"""Each stage's component imports with only that stage's requirements installed.

A stage image (components/Dockerfile) holds exactly components/<stage>/requirements.txt plus
ctloop installed with --no-deps. Here each stage gets the same: a venv under
~/.cache/ctloop/stage-venvs/<stage>-<sha256 of its requirements file>/ (kept between runs and
checkouts, like pip's own cache; a changed requirements file gets a new venv)
with the requirements, and a wheel of this working tree built from the directories the
Dockerfile copies. In that venv, isolated from the dev venv (`python -I`, a fresh working
directory), a subprocess imports the kfp executor and components.<stage>.component and runs the
import statements inside the stage's functions: every component function's body (where kfp
components import: the body runs in a fresh process) and what a logic function imports only
when called. A package missing from the requirements fails the test with the module's name.

Slow: the first build of the eight venvs installs torch three times and MLflow with its
dependencies four times (measured on the 2-core machine, shared: monitor 58 s, collect 180 s,
validate 39 s, consensus 36 s, train 273 s, analyze 245 s, deploy 191 s, notify 47 s; about
18 minutes in all). Later runs only reinstall the ctloop wheel and import: about 80 seconds.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ctloop_app.warm_tasks import deferred_imports
from kubeflow_pipeline.images import STAGES
from wheel_support import build_wheel, cached_venv, run

ROOT = Path(__file__).resolve().parents[2]
VENVS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctloop" / "stage-venvs"

pytestmark = pytest.mark.slow

# Runs inside a stage venv: execute each statement, report what failed as JSON on stdout, and
# every loaded module's file and sys.path entry that lies outside the stage venv and the base
# interpreter's standard library (the dev venv, the work tree).
CHECKER = r"""
import json, os, sys, traceback
failures = []
for statement in json.loads(sys.argv[1]):
    try:
        exec(statement, {})
    except ModuleNotFoundError as error:
        failures.append({"statement": statement, "module": error.name, "error": str(error)})
    except Exception as error:
        failures.append({"statement": statement, "module": None,
                         "error": "".join(traceback.format_exception_only(error)).strip()})
allowed = (sys.prefix + "/", sys.base_prefix + "/")
files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
# (torch.ops and torch.classes are stand-in modules whose __file__ is a bare "_ops.py")
foreign = sorted(name for name in files if name and os.path.isabs(name) and not name.startswith(allowed))
foreign += [entry for entry in sys.path if not entry.startswith(allowed)]
print(json.dumps({"failures": failures, "foreign": foreign}))
"""


def deferred_import_statements(stage: str) -> list[str]:
    """The stage's deferred imports (ctloop_app.warm_tasks.deferred_imports, which the forkserver
    preloads), as statements: what the stage image must provide."""
    return list(dict.fromkeys(ast.unparse(node) for node in deferred_imports(stage)))


@contextmanager
def locked(stage: str) -> Iterator[None]:
    """One builder or user of a stage venv at a time (several people run tests in this tree)."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{stage}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def ctloop_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this working tree, built from what the Dockerfile copies, as the image builds it."""
    return build_wheel(tmp_path_factory.mktemp("ctloop-source"), tmp_path_factory.mktemp("wheel"))


def check_in_stage_venv(stage: str, wheel: Path, statements: list[str], scratch: Path) -> dict:
    """Install `wheel` (no deps) into the stage's venv and run `statements` there, isolated."""
    with locked(stage):
        venv, seconds = cached_venv(VENVS, f"{stage}-", ROOT / "components" / stage / "requirements.txt")
        if seconds is not None:
            print(f"\n[stage venv] {stage}: built in {seconds:.1f} s")
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)])
        scratch.mkdir(parents=True, exist_ok=True)
        environment = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(scratch), "_KFP_RUNTIME": "true",
                       "LANG": "C.UTF-8"}
        result = run([python, "-I", "-c", CHECKER, json.dumps(statements)], cwd=scratch, env=environment,
                     timeout=300)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("stage", STAGES)
def test_component_imports_with_only_its_requirements(stage: str, ctloop_wheel: Path, tmp_path: Path) -> None:
    # kfp's executor entry point as the component's container command runs it (_KFP_RUNTIME=true).
    statements = ["import kfp.dsl.executor_main", f"import components.{stage}.component",
                  *deferred_import_statements(stage)]
    report = check_in_stage_venv(stage, ctloop_wheel, statements, tmp_path / "cwd")

    missing = [f"{failure['statement']!r}: {failure['error']}" for failure in report["failures"]]
    assert not missing, (f"components/{stage}/requirements.txt lacks what the stage imports (add the module's "
                         f"package, pinned as in .venv):\n" + "\n".join(missing))
    assert not report["foreign"], f"{stage}: modules or sys.path entries outside its venv: {report['foreign']}"


def test_the_statements_are_the_component_bodies_and_the_deferred_imports() -> None:
    assert deferred_import_statements("collect") == [
        "from collections import namedtuple",
        "from pathlib import Path",
        "from components.collect.logic import collect_from_registry",
        "from ctloop.alerts import alert_on_failure",
        "from ctloop import registry",  # collect_from_registry's: MLflow only when the stage runs
    ]
    notify = deferred_import_statements("notify")  # four component functions, imports deduplicated
    assert [statement for statement in notify if statement.startswith("from components")] == [
        "from components.notify.logic import announce_retrain",
        "from components.notify.logic import Consensus, announce_deployed",
        "from components.notify.logic import Consensus, announce_not_deployed",
        "from components.notify.logic import announce_run_end",
    ]


def test_a_package_missing_from_the_requirements_is_named(ctloop_wheel: Path, tmp_path: Path) -> None:
    """The monitor image carries no torch: importing it there must fail, naming torch."""
    report = check_in_stage_venv("monitor", ctloop_wheel, ["import components.monitor.component", "import torch"],
                                 tmp_path / "cwd")
    assert report["failures"] == [
        {"statement": "import torch", "module": "torch", "error": "No module named 'torch'"}
    ]
