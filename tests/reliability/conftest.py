"""Fixtures of the reliability suite: the bootstrapped models once per session, a fresh local stack
(TorchServe + MLflow on SQLite) per test, and a local Slack webhook receiver."""

from __future__ import annotations

from typing import Iterator

import pytest

from pipeline_support import boot, stack  # noqa: F401 (fixtures)
from slack_support import Receiver


@pytest.fixture
def slack() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
