"""The whole pipeline through kfp.local against a real TorchServe and MLflow (SQLite).

Each test starts its own stack with the bootstrapped models, plays a window of production
traffic through the champion and runs one continuous-training cycle.
"""

from __future__ import annotations

import pytest

from ctloop import registry
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop_app.stack import REGISTERED_MODEL
from pipeline_support import cycle, outbox, versions
from pipeline_support import play as _play

pytestmark = [pytest.mark.serving, pytest.mark.slow]

WINDOW = 150
SMALL = PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30)


def play(stack, boot, drift: bool) -> None:
    _play(stack, boot, drift, WINDOW)


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
