"""Infrastructure faults during a real cycle (kfp.local, TorchServe, MLflow on SQLite, Slack):
each ends in a clear failure with an alert, or the pipeline goes on; never a half-deployed
champion, a lost prediction or a dangling model version. (Slack answering 500 and a prediction
log whose last line was cut short happen during the deploy run of test_pipeline_e2e.py.)"""

from __future__ import annotations

import dataclasses
import signal

import pytest
from mlflow.exceptions import MlflowException

from ctloop import registry
from ctloop.config import PipelineConfig
from ctloop_app.stack import REGISTERED_MODEL
from pipeline_support import DEPLOYING_GOLDEN_REGRESSION, cycle, outbox, play, versions
from reliability_support import (
    Watcher,
    champion_versions,
    check_invariants,
    restart_torchserve,
    stage_process,
)
from serving.client import TorchServeClient
from ctloop.process import free_port

pytestmark = [pytest.mark.serving, pytest.mark.slow]

WINDOW = 150
SMALL = PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30,
                       max_golden_regression=DEPLOYING_GOLDEN_REGRESSION)


def failure_alerts(stack, stage: str) -> list[str]:
    return [text for text in outbox(stack) if text.startswith(f"Run failed in stage {stage}: ")]


def test_b1_down_during_consensus_is_retried_then_fails_with_an_alert(stack, boot, tmp_path) -> None:
    answered = len(play(stack, boot, drift=True, window=WINDOW))
    stack.client.scale("b1", "1", 0)  # registered, but no worker: TorchServe answers 503
    run = cycle(stack, boot, tmp_path, SMALL)
    assert not run.succeeded
    consensus = run.task("consensus-op")
    assert consensus.status == "FAILURE" and run.task("train-op") is None
    assert consensus.seconds >= 2 + 4  # three retries, after waits of 0, 2 and 4 s (ctloop.http)
    [alert] = failure_alerts(stack, "consensus-filter")
    assert "BranchUnavailableError: branch model 'b1' unavailable after 4 attempts: TorchServe 503" in alert
    assert failure_alerts(stack, "pipeline")
    assert versions(stack) == ["1"]
    stack.client.scale("b1", "1", 1)
    assert check_invariants(stack, boot.golden_set, answered) == "1"


def test_torchserve_stopped_during_deploy_leaves_the_old_champion(own_stack, boot, tmp_path) -> None:
    """MLflow's `champion` alias is the record of what serves, and it moves only once the new
    version answers as default; the desired state follows it. So TorchServe dying in the middle
    of a deploy fails the deploy stage with an alert, leaves the alias on the old champion, and a
    TorchServe restarted on the same model store serves the old champion again, by itself."""
    stack = own_stack  # this test stops TorchServe: a TorchServe of its own
    answered = len(play(stack, boot, drift=True, window=WINDOW))
    watch = TorchServeClient(stack.torchserve.inference_url, stack.torchserve.management_url,
                             stack.torchserve.keys())
    try:
        with Watcher(lambda: "2" in champion_versions(stack, watch), stack.torchserve.stop) as killer:
            run = cycle(stack, boot, tmp_path, SMALL)
    finally:
        watch.close()
    assert killer.fired.is_set(), "the deploy never registered version 2"
    assert not run.succeeded
    assert run.task("deploy-op").status == "FAILURE" and run.task("notify-deployed-op") is None
    [alert] = failure_alerts(stack, "deploy")
    assert alert.startswith("Run failed in stage deploy: DeployFailedError: champion version 2 not deployed and "
                            "not fully rolled back: TorchServe 0: "), alert
    assert "; rollback incomplete (TorchServe 0: " in alert
    assert not (stack.model_store / "champion-v2.mar").exists()
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", stack.tracking_uri) == "1"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "challenger", stack.tracking_uri) == "2"

    restart_torchserve(stack)
    assert stack.client.versions("champion") == ["1"]
    assert check_invariants(stack, boot.golden_set, answered) == "1"


def test_mlflow_unreachable_fails_the_run_cleanly(stack, boot, tmp_path, monkeypatch) -> None:
    answered = len(play(stack, boot, drift=True, window=WINDOW))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = f"http://127.0.0.1:{free_port()}"
    run = cycle(dataclasses.replace(stack, tracking_uri=down), boot, tmp_path, SMALL)
    assert not run.succeeded
    # The first step compares serving with the registry: without the registry nothing goes on.
    assert run.task("reconcile-op").status == "FAILURE" and run.task("monitor-op") is None
    [alert] = failure_alerts(stack, "reconcile")
    assert f"RegistryError: cannot reach the MLflow tracking server at {down}" in alert
    assert run.task("reconcile-op").seconds < 20
    assert versions(stack) == ["1"]
    assert check_invariants(stack, boot.golden_set, answered) == "1"


def test_train_killed_then_rerun_registers_one_version(stack, boot, tmp_path) -> None:
    answered = len(play(stack, boot, drift=True, window=WINDOW))
    mlflow = registry.client(stack.tracking_uri)

    def training_mid_way() -> bool:
        """The train task is running and has logged at least one epoch to MLflow."""
        if stage_process("train_op") is None:
            return False
        try:
            experiment = mlflow.get_experiment_by_name("ctloop")
            runs = mlflow.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        except MlflowException:  # SQLite busy while the stage writes; ask again
            return False
        return any("loss" in run.data.metrics for run in runs)

    def kill() -> None:
        stage_process("train_op").send_signal(signal.SIGKILL)

    with Watcher(training_mid_way, kill, period=0.1) as killer:
        first = cycle(stack, boot, tmp_path, SMALL.with_overrides(train_epochs=200, train_patience=200))
    assert killer.fired.is_set()
    assert not first.succeeded and first.task("train-op").status == "FAILURE"
    assert failure_alerts(stack, "pipeline") and not failure_alerts(stack, "train")  # SIGKILL: no goodbye
    assert versions(stack) == ["1"]
    assert registry.get_version_by_alias(REGISTERED_MODEL, "challenger", stack.tracking_uri) is None

    second = cycle(stack, boot, tmp_path, SMALL)
    assert second.succeeded, second.error
    assert versions(stack) == ["1", "2"]
    assert second.task("deploy-op").parameters == {"old_version": "1", "new_version": "2", "status": "deployed"}
    assert registry.get_version_by_alias(REGISTERED_MODEL, "challenger", stack.tracking_uri) == "2"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "previous-champion", stack.tracking_uri) == "1"
    assert check_invariants(stack, boot.golden_set, answered) == "2"
