"""What the session's bootstrapped digits models (`boot`: each role trained with its full recipe,
seed 0) do under drift. Here rather than in the unit tier because training the three models takes
22 s on an idle 2-core machine and minutes beside other work; the e2e tier's stacks serve the same
bootstrap, trained once per run."""

from __future__ import annotations

import numpy as np

from ctloop.drift import apply_drift
from ctloop.estimate import atc_estimate, atc_threshold
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, predict_proba
from ctloop.models import ROLES
from ctloop.training import accuracy


def test_branch_models_are_more_robust_to_drift_than_the_champion(boot) -> None:
    """B1/B2 exist to give trustworthy labels on drifted data; the champion, trained for mild drift
    only, does not.

    The models are the session's bootstrap (`boot`)."""
    golden = ImageSet.load(boot.golden_set)
    drifted = ImageSet(apply_drift(golden.images, "blur", 1.0, np.random.default_rng(1)), golden.labels,
                       golden.class_names)
    scores = {role: accuracy(load_model(boot.model_files[role])[0], drifted) for role in ROLES}
    assert scores["b1"] > scores["champion"] + 0.1
    assert scores["b2"] > scores["champion"] + 0.1


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
