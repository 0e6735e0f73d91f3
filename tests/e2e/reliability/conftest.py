"""Fixtures of the reliability suite: a local Slack webhook receiver (the bootstrapped models and
the fresh local stack per test come from tests/conftest.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from slack_support import Receiver


@pytest.fixture
def slack() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
