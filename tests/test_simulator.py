"""The production-line simulator and its drift kinds."""

from __future__ import annotations

import numpy as np
import pytest

from ctloop.drift import DRIFT_KINDS, apply_drift
from ctloop.simulator import DriftSpec, ProductionLine, digits_split


@pytest.fixture(scope="module")
def split():
    return digits_split(seed=0)


def batch(n: int = 64) -> np.ndarray:
    return digits_split(0).golden.images[:n]


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_each_drift_changes_images_and_stays_in_range(kind: str) -> None:
    clean = batch()
    drifted = apply_drift(clean, kind, 1.0, np.random.default_rng(0))
    assert drifted.dtype == np.float32 and drifted.shape == clean.shape
    assert 0.0 <= drifted.min() and drifted.max() <= 1.0
    assert np.abs(drifted - clean).mean() > 0.02


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_severity_zero_is_the_identity_and_input_is_untouched(kind: str) -> None:
    clean = batch()
    copy = clean.copy()
    np.testing.assert_array_equal(apply_drift(clean, kind, 0.0, np.random.default_rng(0)), clean)
    apply_drift(clean, kind, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(clean, copy)


@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_stronger_drift_moves_images_further(kind: str) -> None:
    clean = batch()
    mild = np.abs(apply_drift(clean, kind, 0.3, np.random.default_rng(0)) - clean).mean()
    strong = np.abs(apply_drift(clean, kind, 1.0, np.random.default_rng(0)) - clean).mean()
    assert strong > mild


@pytest.mark.parametrize(("kind", "severity", "message"), [
    ("fog", 0.5, "unknown drift kind 'fog'"),
    ("blur", 1.5, r"severity must be a number in \[0, 1\]"),
    ("blur", True, "severity must be a number"),
])
def test_bad_drift_specs_are_rejected(kind, severity, message) -> None:
    with pytest.raises(ValueError, match=message):
        apply_drift(batch(2), kind, severity, np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        DriftSpec(kind, severity, start=0)


def test_split_is_disjoint_stratified_and_reproducible(split) -> None:
    sizes = [len(split.train), len(split.golden), len(split.production)]
    assert sum(sizes) == 1797
    assert sizes[0] > sizes[2] > sizes[1]
    for part in (split.train, split.golden, split.production):
        assert set(part.labels.tolist()) == set(range(10))
    flat = {name: {image.tobytes() for image in part.images} for name, part in
            (("t", split.train), ("g", split.golden), ("p", split.production))}
    assert len(flat["t"] & flat["g"]) < 5 and len(flat["g"] & flat["p"]) < 5  # digits has a few duplicates
    again = digits_split(seed=0)
    np.testing.assert_array_equal(again.golden.images, split.golden.images)
    assert not np.array_equal(digits_split(seed=1).golden.labels, split.golden.labels)


def test_same_seed_gives_the_same_stream(split) -> None:
    spec = DriftSpec("noise", 0.8, start=10)
    first = ProductionLine(split.production, seed=3, drift=spec)
    second = ProductionLine(split.production, seed=3, drift=spec)
    a = [first.take(7), first.take(13)]
    b = second.take(20)
    np.testing.assert_array_equal(np.concatenate([part.images for part in a]), b.images)
    other = ProductionLine(split.production, seed=4, drift=spec).take(20)
    assert not np.array_equal(other.labels, b.labels)
    assert first.position == 20


def test_drift_starts_exactly_at_its_position(split) -> None:
    clean = ProductionLine(split.production, seed=5).take(30)
    drifted = ProductionLine(split.production, seed=5, drift=DriftSpec("lighting", 1.0, start=12)).take(30)
    np.testing.assert_array_equal(drifted.images[:12], clean.images[:12])
    np.testing.assert_array_equal(drifted.labels, clean.labels)
    changed = np.abs(drifted.images[12:] - clean.images[12:]).mean(axis=(1, 2))
    assert (changed > 0).all()


def test_take_rejects_negative_counts_and_empty_pools(split) -> None:
    with pytest.raises(ValueError, match="cannot take -1 parts"):
        ProductionLine(split.production).take(-1)
    with pytest.raises(ValueError, match="non-empty pool"):
        ProductionLine(split.production.subset(np.arange(0)))
