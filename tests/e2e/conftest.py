"""Fixtures of the end-to-end tier: a local Slack webhook receiver (the bootstrapped models and
the local stacks come from tests/conftest.py). This folder is on sys.path for its tests, so
tests/e2e/reliability imports reliability_support from here too."""

from __future__ import annotations

from typing import Iterator

import pytest

from slack_support import Receiver


@pytest.fixture
def slack() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
