"""train: the challenger, the champion's architecture retrained on pseudo-labelled + previous data.

With `warm_start`, training starts from the current champion's weights (MLflow's `champion`
alias) when it is of the same family, classes and input size, and from scratch otherwise; the
run's `warm_start` param says which and why. Training stops on its own (ctloop.training);
`epochs` is a ceiling and `max_seconds` a cap.

Everything about the run goes to MLflow: params, per-epoch metrics, the TorchScript file and
the training set it saw, and a new registered version carrying the alias `challenger`.
Kubeflow sets MLFLOW_RUN_ID; that run is resumed instead of starting a new one, and a re-run of
the same run (after the pod was killed) reuses the version it already registered.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ctloop import registry
from ctloop.images import ImageSet
from ctloop.modelfile import ModelCard, fit_atc_threshold, load_model, save_model
from ctloop.models import DEFAULT_FAMILIES, FAMILIES
from ctloop.registry import CHALLENGER
from ctloop.training import RECIPES, EpochMetrics, accuracy, champion_recipe, train_model

_logger = logging.getLogger(__name__)

ROLE = "champion"


@dataclass(frozen=True)
class TrainResult:
    """What the train stage produced: the registered version, its run and the final metrics
    (floats, ready for kfp Metrics)."""

    version: str
    run_id: str
    model_file: Path
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["model_file"] = str(self.model_file)
        return result


def train_challenger(
    train_set: Path,
    holdout_set: Path | None,
    epochs: int,
    seed: int,
    tracking_uri: str | None,
    model_name: str,
    out_model: Path,
    experiment: str = "ctloop",
    progress: bool = False,
    family: str = DEFAULT_FAMILIES[ROLE],
    warm_start: bool = False,
    max_seconds: float | None = None,
    patience: int = RECIPES[ROLE].patience,
    augment_severity: float = 0.0,
) -> TrainResult:
    """Train the challenger, log it to MLflow and register it with the alias `challenger`.

    Args:
        train_set: ImageSet .npz to train on (pseudo-labelled window + previous training data).
        holdout_set: ImageSet .npz for per-epoch val_accuracy, or None (or empty) for none.
        epochs: Number of training epochs.
        seed: Seed of the champion recipe (initialisation and batch order).
        tracking_uri: MLflow tracking URI; "" or None means MLFLOW_TRACKING_URI.
        model_name: Registered model name.
        out_model: Where to write the challenger's TorchScript file.
        experiment: MLflow experiment for a new run (ignored when MLFLOW_RUN_ID is set).
        progress: Show a progress bar while training.
        family: The challenger's model family (ctloop.models.FAMILIES).
        warm_start: Start from the champion's weights when its family, classes and size match.
        max_seconds: Stop training after this long (None: only early stopping and `epochs`).
        patience: Stop after this many epochs without a better held-back loss.
        augment_severity: Drift augmentation up to this severity in half the batches (0: none;
            ctloop.training.champion_recipe).

    Returns:
        The TrainResult; `reused` is True when this run had already registered its version.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    # The stage shares its node with TorchServe's workers; on 2 busy cores, 2 torch threads
    # trained about 4x slower than one (bench/, 10 epochs: 11.7 s vs 2.6 s).
    torch.set_num_threads(1)
    uri = registry.resolve_tracking_uri(tracking_uri)
    train = ImageSet.load(train_set)
    holdout = ImageSet.load(holdout_set) if holdout_set is not None else None
    if len(train) == 0:
        raise ValueError(f"{train_set}: the training set is empty; nothing to train on")
    if holdout is not None and holdout.class_names != train.class_names:
        raise ValueError(
            f"{holdout_set}: class names {list(holdout.class_names)} differ from the training "
            f"set's {list(train.class_names)}"
        )
    client = registry.client(uri)
    run_id = _start_or_resume_run(client, uri, experiment)

    existing = registry.find_version_for_run(model_name, run_id, uri)
    if existing is not None:
        return _reuse_version(client, uri, model_name, existing, run_id, Path(out_model))

    initial_state, warm_note = _champion_state(model_name, uri, train, family) if warm_start else (None, "off")
    config = replace(champion_recipe(augment_severity), epochs=epochs, seed=seed, family=family,
                     max_seconds=max_seconds, patience=patience)
    params = _params(train, holdout, epochs, seed, model_name) + [
        Param("family", family), Param("warm_start", warm_note), Param("augment_severity", str(augment_severity))]
    _log(uri, f"log params of run {run_id}", client.log_batch, run_id, params=params)
    started = time.monotonic()

    def on_epoch(metrics: EpochMetrics) -> None:
        values = {"loss": metrics.loss, "train_accuracy": metrics.train_accuracy}
        optional = {"val_accuracy": metrics.val_accuracy, "stopping_loss": metrics.stopping_loss,
                    "learning_rate": metrics.learning_rate}
        values.update({key: value for key, value in optional.items() if value is not None})
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, metrics.epoch) for key, value in values.items()]
        _log(uri, f"log epoch {metrics.epoch} metrics of run {run_id}", client.log_batch, run_id,
             metrics=batch)

    model, history = train_model(ROLE, train, config, val=holdout, on_epoch=on_epoch, progress=progress,
                                 initial_state=initial_state)
    # ATC's labelled data: the pseudo-labelled holdout, the distribution the challenger is for.
    atc = fit_atc_threshold(model, holdout.images, holdout.labels) if holdout is not None else None
    card = ModelCard(ROLE, train.class_names, train.image_size, type(model).__name__, atc)
    out_model = Path(out_model)
    save_model(model, card, out_model)

    final = history[-1]
    metrics = {
        "loss": float(final.loss),
        "train_accuracy": float(final.train_accuracy),
        "train_seconds": time.monotonic() - started,
        "epochs_run": float(len(history)),
    }
    if holdout is not None and len(holdout):
        metrics["val_accuracy"] = accuracy(model, holdout)
    _log(uri, f"log final metrics of run {run_id}", client.log_metric, run_id, "train_seconds",
         metrics["train_seconds"])

    # Only now, with the model file complete, does anything reach the registry.
    version = registry.register_model_file(
        model_name, out_model, train_set, run_id=run_id, alias=CHALLENGER, tracking_uri=uri
    )
    _log(uri, f"tag run {run_id}", client.set_tag, run_id, "ctloop.registered_version", version)
    _finish_run(client, uri, run_id)
    _logger.info("registered %s version %s (run %s) as %s", model_name, version, run_id, CHALLENGER)
    return TrainResult(version, run_id, out_model, metrics)


def _champion_state(model_name: str, uri: str, train: ImageSet,
                    family: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The champion's weights and "champion vN", or None and why training starts from scratch."""
    version = registry.require_alias(model_name, registry.CHAMPION, uri)
    with tempfile.TemporaryDirectory(prefix="ctloop-warm-") as scratch:
        champion, card = load_model(registry.download_version(model_name, version, scratch, uri).model_file)
    expected = FAMILIES[family].__name__
    mismatch = [f"{name} {theirs} != {ours}" for name, theirs, ours in (
        ("family", card.architecture, expected), ("classes", list(card.class_names), list(train.class_names)),
        ("size", list(card.image_size), list(train.image_size))) if theirs != ours]
    if mismatch:
        return None, f"from scratch: champion v{version} differs ({'; '.join(mismatch)})"
    return champion.state_dict(), f"champion v{version}"


def _start_or_resume_run(client: MlflowClient, uri: str, experiment: str) -> str:
    run_id = os.environ.get("MLFLOW_RUN_ID", "")
    if run_id:
        _log(uri, f"resume the run MLFLOW_RUN_ID={run_id}", client.update_run, run_id, "RUNNING")
        return run_id
    experiment_id = registry.ensure_experiment(experiment, uri)
    run = _log(uri, f"create a run in experiment {experiment!r}", client.create_run,
               experiment_id, run_name="train-challenger")
    return run.info.run_id


def _reuse_version(
    client: MlflowClient, uri: str, model_name: str, version: str, run_id: str, out_model: Path
) -> TrainResult:
    """The run already registered `version` before it was interrupted: hand that back."""
    _logger.info("run %s already registered %s version %s; reusing it", run_id, model_name, version)
    registry.set_alias(model_name, CHALLENGER, version, uri)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_model.parent, prefix=".download-") as staging:
        files = registry.download_version(model_name, version, staging, uri)
        os.replace(files.model_file, out_model)
    run = _log(uri, f"read run {run_id}", client.get_run, run_id)
    metrics = {key: float(value) for key, value in run.data.metrics.items()}
    _finish_run(client, uri, run_id)
    return TrainResult(version, run_id, out_model, metrics, reused=True)


def _finish_run(client: MlflowClient, uri: str, run_id: str) -> None:
    # A run that Kubeflow opened is Kubeflow's to close.
    if os.environ.get("MLFLOW_RUN_ID", "") != run_id:
        _log(uri, f"finish run {run_id}", client.set_terminated, run_id)


def _params(
    train: ImageSet, holdout: ImageSet | None, epochs: int, seed: int, model_name: str
) -> list[Param]:
    values = {
        "role": ROLE,
        "model_name": model_name,
        "epochs": epochs,
        "seed": seed,
        "train_size": len(train),
        "holdout_size": len(holdout) if holdout is not None else 0,
        "image_size": "x".join(str(side) for side in train.image_size),
        "class_names": json.dumps(list(train.class_names)),
        "batch_size": RECIPES[ROLE].batch_size,
        "learning_rate": RECIPES[ROLE].learning_rate,
    }
    return [Param(key, str(value)) for key, value in values.items()]


def _log(uri: str, action: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an MlflowClient method; failures become a RegistryError naming the URI and action."""
    with registry.registry_errors(uri, action):
        return call(*args, **kwargs)
