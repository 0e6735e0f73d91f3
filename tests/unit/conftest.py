"""A prediction store written in the layout of ctloop.wire, for the stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctloop import wire

from store_support import StoreWriter


@pytest.fixture
def prediction_store(tmp_path: Path) -> StoreWriter:
    return StoreWriter(tmp_path / "store")
