"""Helpers for tests that need a real TorchServe: tiny untrained models and a started server.

The tests only compare TorchServe's answers with in-process answers of the same model file, so
untrained models are enough.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import requests

from ctloop.modelfile import ModelCard, save_model
from ctloop.models import build_model
from serving.archive import archive_name, build_archive
from serving.client import TorchServeClient
from serving.server import LocalTorchServe

CLASS_NAMES = tuple(f"digit-{index}" for index in range(10))
IMAGE_SIZE = (8, 8)


def write_model(role: str, path: Path, seed: int = 0) -> Path:
    """An untrained ctloop model file of `role` for 8x8 digits (its card's ATC threshold, 0.5, is
    a stand-in: nothing is fitted)."""
    import torch

    torch.manual_seed(seed)
    card = ModelCard(role, CLASS_NAMES, IMAGE_SIZE, role, atc_threshold=0.5)
    save_model(build_model(role, len(CLASS_NAMES), IMAGE_SIZE), card, path)
    return path


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *IMAGE_SIZE), dtype=np.float32)


class Serving:
    """A started LocalTorchServe and a client with its keys."""

    def __init__(self, server: LocalTorchServe) -> None:
        self.server = server
        self.client = TorchServeClient(server.inference_url, server.management_url, server.keys())

    def deploy_archive(self, model_file: Path, role: str, version: str, name: str | None = None) -> Path:
        """Build an archive into the model store and register it as the first version."""
        archive = build_archive(model_file, role, version, self.server.model_store)
        self.client.register(archive.name, name or role)
        return archive


class SharedTorchServe:
    """One TorchServe for the whole session, lent to one test module (`serving`) or one test
    (`stack`) at a time; starting and stopping TorchServe costs seconds, a reset a fraction of one.

    `lend` unregisters what the previous tenant registered, removes its archives from the model
    store and gives the new tenant a prediction store of its own. The champion handler logs to
    CTLOOP_STORE_DIR, which TorchServe reads once, at start: here it is a symbolic link, pointed at
    the tenant's store before any of the tenant's models (and so their workers) is registered.
    """

    def __init__(self, work: Path) -> None:
        self.link = work / "store"
        self.server = LocalTorchServe(work / "torchserve", store_dir=self.link)
        self.tenant: str | None = None
        self._client: TorchServeClient | None = None

    def __enter__(self) -> "SharedTorchServe":
        self.server.start()
        if self.server.store_dir != self.link:
            self.server.stop()
            raise RuntimeError(f"TorchServe logs to {self.server.store_dir}, not through the link {self.link}")
        self._client = TorchServeClient(self.server.inference_url, self.server.management_url, self.server.keys())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        self.server.stop()

    @property
    def client(self) -> TorchServeClient:
        assert self._client is not None, "use SharedTorchServe as a context manager"
        return self._client

    def lend(self, tenant: str, store: Path, keep: tuple[str, ...] = ()) -> list[str]:
        """Make TorchServe `tenant`'s, logging champion predictions to `store` (created).

        Every model is unregistered and its archive removed, except the models in `keep` when
        `tenant` also had TorchServe before and left them ready (one READY worker each, version
        "1"); returns those kept.
        """
        kept = []
        for name in self._registered():
            if self.tenant == tenant and name in keep and self._ready_as_registered(name):
                kept.append(name)
                continue
            default = self.client.default_version(name)
            for version in sorted(self.client.versions(name), key=lambda version: version == default):
                self.client.unregister(name, version)  # the default last: TorchServe refuses it before
        kept_archives = {archive_name(name, "1") for name in kept}
        for path in self.server.model_store.iterdir():
            if path.name not in kept_archives:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        store.mkdir(parents=True, exist_ok=True)
        pointer = self.link.with_name(self.link.name + ".new")
        pointer.unlink(missing_ok=True)
        os.symlink(store, pointer)
        os.replace(pointer, self.link)
        self.tenant = tenant
        return kept

    def _ready_as_registered(self, name: str) -> bool:
        return self.client.versions(name) == ["1"] and self.client.ready_workers(name, "1") == 1 and (
            self.server.model_store / archive_name(name, "1")).is_file()

    def _registered(self) -> list[str]:
        answer = requests.get(f"{self.server.management_url}/models", params={"limit": 1000}, timeout=30,
                              headers={"Authorization": f"Bearer {self.client.keys['management']}"})
        answer.raise_for_status()
        return [model["modelName"] for model in answer.json()["models"]]
