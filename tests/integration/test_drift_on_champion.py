"""The drift stage's test on the bootstrapped champion's embeddings, at the shipped level: every simulated drift kind at the demo's severity is found, and clean production is not."""

from __future__ import annotations

import numpy as np
import pytest

from components.drift.logic import measure_drift
from ctloop.config import PipelineConfig
from ctloop.drift import DRIFT_KINDS, apply_drift
from ctloop.images import ImageSet
from ctloop.modelfile import load_model
from store_support import StoreWriter

CONFIG = PipelineConfig()


@pytest.fixture(scope="module")
def production(boot) -> np.ndarray:
    images = ImageSet.load(boot.production_pool).images
    return images[np.random.default_rng(0).permutation(len(images))]


@pytest.fixture(scope="module")
def champion(boot):
    return load_model(boot.model_files["champion"])[0]


@pytest.mark.parametrize("kind", [None, *DRIFT_KINDS])
def test_the_champion_sees_each_drift_kind_and_no_drift_in_clean_parts(tmp_path, production, champion, kind) -> None:
    window = min(CONFIG.recent_window, len(production) // 2)  # the digits' pool holds 539
    store = StoreWriter(tmp_path / "store")
    newest = production[window:2 * window]
    if kind is not None:
        newest = apply_drift(newest, kind, 1.0, np.random.default_rng(1))
    for image in np.concatenate([production[:window], newest]):
        store.log(0.95, image=image)
    result = measure_drift(store.root, window, "1", lambda: champion, CONFIG.drift_level, CONFIG.drift_permutations)
    assert result.measured and result.drifted == (kind is not None), result.reason
