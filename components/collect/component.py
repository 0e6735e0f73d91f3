"""kfp wrapper of the collect stage: forwards to components.collect.logic.collect_window."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output


def collect_op(
    window: Input[Dataset],
    store_dir: str,
    merge_previous: bool,
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
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model whose `champion` alias names the champion.
        run_name: the pipeline run, for alerts.
        collected: the collected samples (CollectedSet .npz).
    """
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from ctloop.alerts import alert_on_failure
    from components.collect.logic import collect_window
    from ctloop import registry
    from ctloop.images import ImageSet

    with alert_on_failure("collect", run_name), tempfile.TemporaryDirectory() as scratch:
        uri = mlflow_tracking_uri or None
        version = registry.require_alias(registered_model, "champion", uri)
        files = registry.download_version(registered_model, version, scratch, uri)
        if files.train_set is None:
            raise ValueError(f"champion version {version} of {registered_model!r} has no training set")
        previous = ImageSet.load(files.train_set)
        summary = collect_window(Path(window.path), Path(store_dir), Path(collected.path),
                                 files.train_set if merge_previous else None, previous.class_names)
    print(summary.to_dict())
    outputs = namedtuple("CollectOutputs", "new_samples total_samples image_height image_width num_classes")
    return outputs(summary.new_samples, summary.new_samples + summary.previous_samples,
                   previous.image_size[0], previous.image_size[1], len(previous.class_names))
