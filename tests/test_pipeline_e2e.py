"""The whole pipeline through kfp.local against a real TorchServe and MLflow (SQLite).

Each test starts its own stack with the bootstrapped models, plays a window of production
traffic through the champion and runs one continuous-training cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from ctloop import registry
from ctloop.bootstrap import BootstrapResult, bootstrap_digits
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop.stack import REGISTERED_MODEL, LocalStack, install_models, local_stack
from ctloop.traffic import Traffic
from kubeflow_pipeline.local_run import LocalRun, run_cycle

pytestmark = [pytest.mark.serving, pytest.mark.slow]

WINDOW = 150
SMALL = PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30)


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> BootstrapResult:
    return bootstrap_digits(tmp_path_factory.mktemp("bootstrap"), seed=0, progress=False)


@pytest.fixture
def stack(boot: BootstrapResult, tmp_path: Path) -> Iterator[LocalStack]:
    with local_stack(tmp_path / "stack", mlflow_server=False) as started:
        install_models(started, boot.model_files, boot.train_set)
        yield started


def play(stack: LocalStack, boot: BootstrapResult, drift: bool) -> None:
    """One window of parts through the champion, drifted (blur) from the first part or clean."""
    spec = DriftSpec("blur", 1.0, start=0) if drift else None
    line = ProductionLine(ImageSet.load(boot.production_pool), seed=1, drift=spec)
    Traffic(stack.client, stack.store_dir, audit_share=0.3, seed=1).send(line.take(WINDOW))


def cycle(stack: LocalStack, boot: BootstrapResult, tmp_path: Path, config: PipelineConfig) -> LocalRun:
    return run_cycle(stack, config, boot.golden_set, tmp_path / "pipeline_root")


def outbox(stack: LocalStack) -> list[str]:
    return [json.loads(line)["message"]["text"] for line in stack.slack_outbox.read_text().splitlines()]


def versions(stack: LocalStack) -> list[str]:
    found = registry.client(stack.tracking_uri).search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return sorted(str(version.version) for version in found)


def test_drift_retrains_and_deploys_a_better_champion(stack, boot, tmp_path) -> None:
    play(stack, boot, drift=True)
    run = cycle(stack, boot, tmp_path, SMALL)
    assert run.succeeded, run.error
    assert run.task("deploy-op").parameters == {"old_version": "1", "new_version": "2"}
    assert stack.client.default_version("champion") == "2"
    assert stack.client.predict("champion", ImageSet.load(boot.golden_set).images[:1]).model_version == "2"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", stack.tracking_uri) == "2"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "previous-champion", stack.tracking_uri) == "1"
    texts = outbox(stack)
    assert texts[0].startswith("Retraining started: champion v1 yield")
    assert any(text.startswith("Deployed champion v2 (was v1)") for text in texts)
    assert not any("not deployed" in text.lower() or "failed" in text.lower() for text in texts)
    consensus = run.task("consensus-op").artifacts["metrics"]["metadata"]
    assert consensus["kept"] >= 50 and consensus["pseudo_label_precision"] > 0.9
    analyze = run.task("analyze-op")
    assert analyze.parameters["Output"] is True
    assert {"challenger_new_data", "champion_new_data", "challenger_golden", "champion_golden"} <= set(
        analyze.artifacts
    )


def test_a_challenger_that_is_not_better_enough_is_not_deployed(stack, boot, tmp_path) -> None:
    play(stack, boot, drift=True)
    run = cycle(stack, boot, tmp_path, SMALL.with_overrides(min_improvement=0.9))
    assert run.succeeded, run.error
    assert run.task("deploy-op") is None
    assert stack.client.default_version("champion") == "1"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", stack.tracking_uri) == "1"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "challenger", stack.tracking_uri) == "2"
    not_deployed = [text for text in outbox(stack) if text.startswith("Challenger not deployed")]
    assert len(not_deployed) == 1 and "required improvement of 0.900" in not_deployed[0]


def test_failing_validation_alerts_and_changes_nothing(stack, boot, tmp_path) -> None:
    play(stack, boot, drift=True)
    run = cycle(stack, boot, tmp_path, SMALL.with_overrides(min_samples=WINDOW + 1))
    assert not run.succeeded
    assert run.task("validate-op").status == "FAILURE"
    assert run.task("consensus-op") is None and run.task("train-op") is None
    assert run.task("notify-run-end-op").status == "SUCCESS"
    texts = outbox(stack)
    assert any("validate" in text and f"{WINDOW} new samples" in text for text in texts), texts
    assert any("pipeline" in text and "failed" in text.lower() for text in texts), texts
    assert stack.client.default_version("champion") == "1"
    assert versions(stack) == ["1"]
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", stack.tracking_uri) == "1"


def test_healthy_yield_stops_after_the_monitor(stack, boot, tmp_path) -> None:
    play(stack, boot, drift=False)
    run = cycle(stack, boot, tmp_path, SMALL)
    assert run.succeeded, run.error
    assert run.task("monitor-op").parameters["Output"] is False
    assert set(run.tasks) == {"monitor-op", "notify-run-end-op"}
    assert not stack.slack_outbox.exists()
