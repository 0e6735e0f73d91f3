"""How the warm task runner reads kfp's commands and what it preloads (ctloop_app.warm_tasks); its
forked tasks run through kfp.local in tests/e2e/test_forked_tasks.py."""

import importlib.util
from typing import Callable

import pytest
from google.protobuf import json_format
from kfp import dsl

from ctloop_app.warm_tasks import command_task, stage_modules
from kubeflow_pipeline.images import STAGES
from kubeflow_pipeline.pipeline import STAGE_OF


def _command(function: Callable, **options: object) -> list[str]:
    """The command and arguments kfp compiles `function`'s component to."""
    component = dsl.component(function, base_image="python:3.11", install_kfp_package=False, **options)
    executors = json_format.MessageToDict(component.pipeline_spec)["deploymentSpec"]["executors"]
    container = next(iter(executors.values()))["container"]
    return container["command"] + container["args"]


@pytest.mark.parametrize("function", list(STAGE_OF), ids=lambda function: function.__name__)
def test_every_stage_task_is_read_from_its_compiled_command(function: Callable) -> None:
    """A kfp upgrade that compiles components differently fails here, not in a user's run."""
    task = command_task(_command(function))
    assert task is not None and task.function == function.__name__
    assert f"def {function.__name__}(" in task.source


def test_a_component_that_installs_packages_runs_as_kfp_local_runs_it() -> None:
    def needs_a_package() -> str:
        return "installed first"

    command = _command(needs_a_package, packages_to_install=["six"])
    assert "pip install" in " ".join(command) and command_task(command) is None
    assert command_task(["python3", "-m", "some.module"]) is None


def test_the_forkserver_preloads_every_stage_and_what_its_logic_defers() -> None:
    modules = stage_modules()
    assert {"kfp.dsl.executor_main", "ctloop.alerts", "ctloop.registry", "components.deploy.reconcile",
            "ctloop_app.first_use", *(f"components.{stage}.logic" for stage in STAGES)} <= set(modules)
    assert all(importlib.util.find_spec(module) for module in modules)
