"""ATC: the threshold reproduces the labelled accuracy (tests/integration/test_bootstrapped_models.py
checks it tracks the champion's accuracy under drift)."""

from __future__ import annotations

import numpy as np
import pytest

from ctloop.estimate import atc_estimate, atc_threshold


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
