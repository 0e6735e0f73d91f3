"""kfp wrappers of the deploy stage: deploy_op forwards to components.deploy.logic.deploy_to_torchserve,
reconcile_op (the step every run starts with) to components.deploy.reconcile.reconcile_serving."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def deploy_op(
    challenger: Input[Model],
    version: str,
    canary_set: Input[Dataset],
    decision: Input[Artifact],
    model_store: str,
    ts_inference_url: str,
    ts_management_url: str,
    mlflow_tracking_uri: str,
    registered_model: str,
    keep_versions: int,
    run_name: str,
    metrics: Output[Metrics],
) -> NamedTuple("DeployOutputs", [("old_version", str), ("new_version", str), ("status", str)]):
    """Serve the challenger as the new default champion version, then move the MLflow aliases;
    status "superseded" (nothing changed) if another run replaced the champion analyze compared against.

    Args:
        challenger: the approved challenger's model file (from train).
        version: its MLflow model version, which becomes its TorchServe version.
        canary_set: images with the challenger's in-process answers, for the smoke test (from analyze).
        decision: analyze's decision, naming the champion the challenger must replace.
        model_store: TorchServe's model store directory.
        ts_inference_url: TorchServe inference API.
        ts_management_url: TorchServe management API (keys come from the environment).
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model name.
        keep_versions: TorchServe versions kept per model.
        run_name: the pipeline run, for alerts.
        metrics: seconds per deploy step and the canary accuracy.
    """
    from collections import namedtuple
    from pathlib import Path

    from components.deploy.logic import deploy_to_torchserve
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("deploy", run_name):
        outcome = deploy_to_torchserve(Path(challenger.path), version, Path(canary_set.path), Path(model_store),
                                       ts_inference_url, ts_management_url, mlflow_tracking_uri, registered_model,
                                       keep_versions, Path(decision.path))
    for name, value in outcome.metrics().items():
        metrics.log_metric(name, value)
    push_figures("deploy", {**outcome.metrics(), **outcome.summary()})
    return namedtuple("DeployOutputs", "old_version new_version status")(**outcome.outputs())


def reconcile_op(model_store: str, ts_inference_url: str, ts_management_url: str, mlflow_tracking_uri: str,
                 registered_model: str, run_name: str) -> str:
    """Repair any split between TorchServe and MLflow's `champion` alias; returns the champion ("" if none).

    Args:
        model_store: TorchServe's model store directory (its desired state and archives).
        ts_inference_url: TorchServe inference API.
        ts_management_url: TorchServe management API (keys come from the environment).
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model name.
        run_name: the pipeline run, for Slack.
    """
    from pathlib import Path

    from components.deploy.reconcile import reconcile_serving
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("reconcile", run_name):
        result = reconcile_serving(Path(model_store), ts_inference_url, ts_management_url, mlflow_tracking_uri,
                                   registered_model, run_name)
    push_figures("reconcile", {"serving_version": result.champion})
    return result.champion or ""
