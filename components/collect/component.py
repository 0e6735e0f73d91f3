"""kfp wrapper of the collect stage: forwards to components.collect.logic.collect_from_registry."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output


def collect_op(
    window: Input[Dataset],
    store_dir: str,
    merge_previous: bool,
    previous_per_class: int,
    mlflow_tracking_uri: str,
    registered_model: str,
    run_name: str,
    collected: Output[Dataset],
) -> NamedTuple("CollectOutputs", [("new_samples", int), ("total_samples", int), ("image_height", int),
                                   ("image_width", int), ("num_classes", int)]):
    """Fetch the window's samples, merged with the champion's training set if asked.

    Args:
        window: prediction records of the monitored window (from monitor).
        store_dir: prediction store root holding the samples.
        merge_previous: also train on the set the champion was trained on.
        previous_per_class: the most rows of that set kept per class (0: all).
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model whose `champion` alias names the champion.
        run_name: the pipeline run, for alerts.
        collected: the collected samples (CollectedSet .npz).
    """
    from collections import namedtuple
    from pathlib import Path

    from components.collect.logic import collect_from_registry
    from ctloop.alerts import alert_on_failure

    with alert_on_failure("collect", run_name):
        result = collect_from_registry(Path(window.path), Path(store_dir), Path(collected.path), merge_previous,
                                       mlflow_tracking_uri, registered_model, previous_per_class)
    outputs = namedtuple("CollectOutputs", "new_samples total_samples image_height image_width num_classes")
    return outputs(**result.outputs())
