"""kfp wrapper of the train stage: forwards to components.train.logic.train_challenger."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def train_op(
    train_set: Input[Dataset],
    holdout_set: Input[Dataset],
    epochs: int,
    seed: int,
    family: str,
    warm_start: bool,
    max_seconds: float,
    patience: int,
    augment_severity: float,
    mlflow_tracking_uri: str,
    registered_model: str,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("version", str), ("run_id", str)]):
    """Train the challenger and register it in MLflow with the alias `challenger`.

    Args:
        train_set: pseudo-labelled plus previous training rows (from consensus-filter).
        holdout_set: pseudo-labelled holdout, for per-epoch validation accuracy.
        epochs: the most training epochs (training stops earlier once it stops improving).
        seed: training seed.
        family: the challenger's model family (resnet, dilated or mixer).
        warm_start: start from the champion's weights when family, classes and size match.
        max_seconds: stop training after this many seconds (0: no cap).
        patience: stop after this many epochs without a better held-back loss.
        augment_severity: drift augmentation up to this severity in half the batches (0: none).
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model name.
        run_name: the pipeline run, for alerts.
        model: the challenger's TorchScript file.
        metrics: final training metrics.
    """
    from collections import namedtuple
    from pathlib import Path

    from ctloop.alerts import alert_on_failure
    from components.train.logic import train_challenger

    with alert_on_failure("train", run_name):
        result = train_challenger(Path(train_set.path), Path(holdout_set.path), epochs, seed,
                                  mlflow_tracking_uri, registered_model, Path(model.path), family=family,
                                  warm_start=warm_start, max_seconds=max_seconds or None, patience=patience,
                                  augment_severity=augment_severity)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    model.metadata["mlflow_version"] = result.version
    model.metadata["mlflow_run_id"] = result.run_id
    return namedtuple("TrainOutputs", "version run_id")(result.version, result.run_id)
