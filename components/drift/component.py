"""kfp wrapper of the drift stage: forwards to components.drift.logic.check_drift_from_registry."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def drift_op(
    monitor_decision: Input[Artifact],
    monitor_window: Input[Dataset],
    store_dir: str,
    recent_window: int,
    trigger: str,
    drift_level: float,
    drift_permutations: int,
    mlflow_tracking_uri: str,
    registered_model: str,
    run_name: str,
    decision: Output[Artifact],
    window: Output[Dataset],
    metrics: Output[Metrics],
) -> bool:
    """Test the champion's inputs for drift and decide the run; returns whether to retrain.

    Args:
        monitor_decision: the monitor's decision and yield figures (JSON).
        monitor_window: the monitor's window (JSON lines).
        store_dir: prediction store root holding the segments and their inputs.
        recent_window: predictions per window (the monitor's).
        trigger: what retrains: yield, drift, or both (either signal).
        drift_level: drift when the p-value is at most this (shared among overall and slices).
        drift_permutations: relabellings behind the p-value.
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model; the monitored version's model file comes from it.
        run_name: the pipeline run, for alerts.
        decision: the run's decision: the monitor's figures, the drift test's, the signals (JSON).
        window: the predictions to retrain on (JSON lines), for collect.
        metrics: the drift figures (drift_distance, drift_p_value, drifted) when measured.
    """
    from pathlib import Path

    from components.drift.logic import check_drift_from_registry, decision_metrics
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("drift", run_name):
        result = check_drift_from_registry(Path(store_dir), recent_window, trigger, drift_level, drift_permutations,
                                           Path(monitor_decision.path), Path(monitor_window.path), Path(decision.path),
                                           Path(window.path), mlflow_tracking_uri, registered_model)
    figures = decision_metrics(result)
    for name, value in figures.items():
        metrics.log_metric(name, value)
    push_figures("drift", {**figures, "retrain": result["retrain"]},
                 {"model_version": str(result["model_version"])}, result["drift"]["slices"])
    return result["retrain"]
