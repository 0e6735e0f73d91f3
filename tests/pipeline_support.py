"""Helpers for tests that run the whole pipeline against a local stack (TorchServe + MLflow);
the `boot` and `stack` fixtures are in tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

from ctloop import registry
from ctloop_app.bootstrap import BootstrapResult
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.stack import REGISTERED_MODEL, LocalStack
from ctloop_app.traffic import Answer, Traffic
from ctloop_app.local_run import LocalRun, run_cycle


def play(stack: LocalStack, boot: BootstrapResult, drift: bool, window: int,
         only_class: int | None = None) -> list[Answer]:
    """`window` parts through the champion, drifted (blur) from the first part or clean; with
    `only_class`, only parts of that class."""
    spec = DriftSpec("blur", 1.0, start=0) if drift else None
    pool = ImageSet.load(boot.production_pool)
    if only_class is not None:
        pool = pool.subset(pool.labels == only_class)
    line = ProductionLine(pool, seed=1, drift=spec)
    return Traffic(stack.client, stack.store_dir, audit_share=0.3, seed=1).send(line.take(window))


def cycle(stack: LocalStack, boot: BootstrapResult, tmp_path: Path, config: PipelineConfig) -> LocalRun:
    return run_cycle(stack, config, boot.golden_set, tmp_path / "pipeline_root")


def outbox_messages(stack: LocalStack) -> list[dict]:
    """The Slack messages in the stack's outbox, with the reason each landed there."""
    if not stack.slack_outbox.exists():
        return []
    return [json.loads(line) for line in stack.slack_outbox.read_text().splitlines()]


def outbox(stack: LocalStack) -> list[str]:
    return [entry["message"]["text"] for entry in outbox_messages(stack)]


def versions(stack: LocalStack) -> list[str]:
    found = registry.client(stack.tracking_uri).search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return sorted((str(version.version) for version in found), key=int)
