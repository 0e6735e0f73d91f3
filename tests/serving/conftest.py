"""Fixtures of the serving tests: tiny untrained models (the `serving` fixture is suite-wide)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from serving_support import random_images, write_model


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {role: write_model(role, folder / f"{role}.pt", seed) for seed, role in enumerate(("champion", "b1", "b2"))}


@pytest.fixture(name="random_images")
def random_images_fixture() -> Callable[[int, int], np.ndarray]:
    """make(count, seed): float32 (count, 8, 8) images in [0, 1]."""
    return random_images
