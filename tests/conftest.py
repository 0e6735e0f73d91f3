"""Suite-wide fixtures: no environment leaks into tests."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from serving.server import LocalTorchServe
from pipeline_support import boot, stack  # noqa: F401 (fixtures: one bootstrap per session)
from serving_support import Serving

LEAKY_PREFIXES = ("MLFLOW_", "KFP_", "SLACK_", "TS_", "CTLOOP_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the developer's shell must not change what a test sees."""
    for name in list(os.environ):
        if name.startswith(LEAKY_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """One real TorchServe for the test module, logging champion predictions to `<tmp>/store`."""
    work = tmp_path_factory.mktemp("torchserve")
    server = LocalTorchServe(work / "ts", store_dir=work / "store")
    with server:
        serving = Serving(server)
        yield serving
        serving.client.close()
