"""Helpers for tests that need a real TorchServe: tiny untrained models and a started server.

The tests only compare TorchServe's answers with in-process answers of the same model file, so
untrained models are enough.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctloop.modelfile import ModelCard, save_model
from ctloop.models import build_model
from serving.archive import build_archive
from serving.client import TorchServeClient
from serving.server import LocalTorchServe

CLASS_NAMES = tuple(f"digit-{index}" for index in range(10))
IMAGE_SIZE = (8, 8)


def write_model(role: str, path: Path, seed: int = 0) -> Path:
    """An untrained ctloop model file of `role` for 8x8 digits."""
    import torch

    torch.manual_seed(seed)
    save_model(build_model(role, len(CLASS_NAMES)), ModelCard(role, CLASS_NAMES, IMAGE_SIZE, role), path)
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
