"""ATC: the threshold reproduces the labelled accuracy, and tracks accuracy under drift."""

from __future__ import annotations

import numpy as np
import pytest

from ctloop.drift import apply_drift
from ctloop.estimate import atc_estimate, atc_threshold
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, predict_proba


def test_the_threshold_puts_the_labelled_accuracy_above_it() -> None:
    rng = np.random.default_rng(0)
    confidences = rng.random(1000)
    correct = rng.random(1000) < 0.8
    threshold = atc_threshold(confidences, correct)
    assert atc_estimate(confidences, threshold) == pytest.approx(correct.mean(), abs=1e-3)
    assert atc_estimate(confidences, atc_threshold(confidences, np.ones(1000, bool))) == 1.0
    assert atc_estimate(confidences, atc_threshold(confidences, np.zeros(1000, bool))) == 0.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="need as many confidences as answers"):
        atc_threshold(np.array([0.5, 0.6]), np.array([True]))


def test_the_estimate_follows_the_champions_accuracy_under_blur(boot) -> None:
    """Fitted on the clean golden set, applied to blurred parts of the production pool: closer
    to the true accuracy than the clean accuracy is (what a monitor would assume without it)."""
    model, _ = load_model(boot.model_files["champion"])
    golden, pool = ImageSet.load(boot.golden_set), ImageSet.load(boot.production_pool)
    clean = predict_proba(model, golden.images)
    threshold = atc_threshold(clean.max(axis=1), clean.argmax(axis=1) == golden.labels)
    blurred = predict_proba(model, apply_drift(pool.images, "blur", 1.0, np.random.default_rng(0)))
    truth = float((blurred.argmax(axis=1) == pool.labels).mean())
    estimate = atc_estimate(blurred.max(axis=1), threshold)
    clean_accuracy = float((clean.argmax(axis=1) == golden.labels).mean())
    assert abs(estimate - truth) < abs(clean_accuracy - truth) / 2, (estimate, truth, clean_accuracy)
