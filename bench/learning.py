"""4. Learning quality, per drift kind, in-process (no servers, so it stays fast):

the same steps as the pipeline — a drifted window of `recent_window` parts, B1 and B2
pseudo-label it (kept where they agree and both are >= `confidence_threshold`), a stratified
`val_ratio` holdout is set aside, the rest is repeated `new_sample_repeat` times and merged with
the previous training set, and the champion's family is trained with the champion recipe as the
train stage trains it (early stopping, `train_epochs` as a ceiling, from the champion's weights
with `warm_start`) — against an oracle trained the same way on the TRUE labels of the whole
window. Both are scored on the golden set drifted the same way: golden images never appear in a
window. It runs once per simulated line (digits, parts).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from bench.settings import BenchSettings
from bench.timing import ratio
from ctloop_app.bootstrap import BootstrapResult
from ctloop.drift import DriftKind, apply_drift
from ctloop.images import ImageSet, stratified_split
from ctloop.modelfile import load_model, predict_proba
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop.training import accuracy, champion_recipe, train_model


def bench_learning(boot: BootstrapResult, settings: BenchSettings) -> dict[str, object]:
    """One row per drift kind, plus the settings that shape the numbers."""
    previous, golden = ImageSet.load(boot.train_set), ImageSet.load(boot.golden_set)
    pool = ImageSet.load(boot.production_pool)
    models = {role: load_model(boot.model_files[role])[0] for role in ("champion", "b1", "b2")}
    return {
        "severity": settings.severity,
        "window": settings.config.recent_window,
        "train_epochs": settings.config.train_epochs,
        "image_size": list(golden.image_size),
        "classes": len(golden.class_names),
        "bootstrap_golden_accuracy": {role: round(score, 4) for role, score in boot.golden_accuracy.items()},
        "evaluated_on": f"golden set ({len(golden)} images) with the same drift",
        "kinds": {kind: _one_kind(kind, previous, golden, pool, models, settings) for kind in settings.drift_kinds},
    }


def _one_kind(kind: DriftKind, previous: ImageSet, golden: ImageSet, pool: ImageSet, models: dict[str, nn.Module],
              settings: BenchSettings) -> dict[str, object]:
    config = settings.config
    window = ProductionLine(pool, settings.seed, DriftSpec(kind, settings.severity, start=0)).take(config.recent_window)
    drifted = ImageSet(apply_drift(golden.images, kind, settings.severity, np.random.default_rng([settings.seed, 2])),
                       golden.labels, golden.class_names)
    keep, pseudo_labels = _consensus(models["b1"], models["b2"], window.images, config.confidence_threshold)
    train_index, _ = stratified_split(pseudo_labels, config.val_ratio, config.seed)
    pseudo = ImageSet(window.images[keep][train_index], pseudo_labels[train_index], window.class_names)
    challenger = _retrain(pseudo, previous, settings, models["champion"])
    oracle = _retrain(window, previous, settings, models["champion"])
    new_accuracy, oracle_accuracy = accuracy(challenger, drifted), accuracy(oracle, drifted)
    return {
        "old_champion_accuracy": round(accuracy(models["champion"], drifted), 4),
        "new_champion_accuracy": round(new_accuracy, 4),
        "oracle_accuracy": round(oracle_accuracy, 4),
        "new_over_oracle": ratio(new_accuracy, oracle_accuracy),
        "new_champion_clean_golden_accuracy": round(accuracy(challenger, golden), 4),
        "pseudo_label_precision": _share(pseudo_labels == window.labels[keep]),
        "coverage": round(float(keep.mean()), 4),
        "kept": int(keep.sum()),
        "trained_on_pseudo_labels": len(pseudo),
    }


def _share(hits: np.ndarray) -> float | None:
    """Share of True in `hits`; None when there is nothing to count."""
    return round(float(hits.mean()), 4) if len(hits) else None


def _consensus(b1: nn.Module, b2: nn.Module, images: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The consensus rule of components/consensus: both agree and both are >= threshold.
    Returns the keep mask over `images` and the pseudo-labels of the kept ones."""
    first, second = predict_proba(b1, images), predict_proba(b2, images)
    labels = first.argmax(axis=1)
    keep = (labels == second.argmax(axis=1)) & (first.max(axis=1) >= threshold) & (second.max(axis=1) >= threshold)
    return keep, labels[keep]


def _retrain(new: ImageSet, previous: ImageSet, settings: BenchSettings, champion: nn.Module) -> nn.Module:
    """The train stage's recipe: new rows repeated `new_sample_repeat` times plus the previous set."""
    config = settings.config
    repeated = np.repeat(np.arange(len(new)), config.new_sample_repeat)
    data = ImageSet(np.concatenate([new.images[repeated], previous.images]),
                    np.concatenate([new.labels[repeated], previous.labels]), previous.class_names)
    recipe = replace(champion_recipe(config.champion_augment), epochs=config.train_epochs, seed=config.seed,
                     family=config.champion_family, max_seconds=config.train_max_seconds or None,
                     patience=config.train_patience)
    initial = champion.state_dict() if config.warm_start else None
    model, _ = train_model("champion", data, recipe, progress=False, initial_state=initial)
    return model
