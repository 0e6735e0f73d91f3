"""kfp wrapper of the monitor stage: forwards to components.monitor.logic.check_store_yield."""

from kfp.dsl import Artifact, Dataset, Metrics, Output


def monitor_op(
    store_dir: str,
    recent_window: int,
    yield_threshold: float,
    use_yield_threshold: bool,
    yield_drop_tolerance: float,
    yield_floor: float,
    yield_confidence: float,
    yield_mode: str,
    ok_class: str,
    run_name: str,
    window: Output[Dataset],
    decision: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """Decide whether the champion's yield calls for retraining; returns that decision.

    Args:
        store_dir: prediction store root holding its segments (and feedback.jsonl if any).
        recent_window: number of newest predictions that form the window.
        yield_threshold: retrain when yield falls below it (if use_yield_threshold).
        use_yield_threshold: False applies the baseline rule instead of the fixed threshold.
        yield_drop_tolerance: baseline rule: allowed drop below the champion's baseline yield.
        yield_floor: baseline rule: never tolerate a yield below this.
        yield_confidence: confidence at which a prediction counts towards yield.
        yield_mode: confidence, pass_rate, estimated_accuracy or accuracy (ctloop.yaml says what each is).
        ok_class: pass_rate: the class name of a good part ("" otherwise: kfp parameters cannot be None).
        run_name: the pipeline run, for alerts.
        window: the window's prediction records (JSON lines), for collect.
        decision: the decision and its figures (JSON), for the Slack message.
        metrics: the yield figures (yield_value, window_size, and baseline when the baseline rule ran).
    """
    from pathlib import Path

    from components.monitor.logic import check_store_yield
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("monitor", run_name):
        result = check_store_yield(Path(store_dir), recent_window, yield_threshold, use_yield_threshold,
                                   yield_drop_tolerance, yield_floor, yield_confidence, Path(window.path),
                                   Path(decision.path), yield_mode, ok_class or None)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    push_figures("monitor", {**result.metrics(), "retrain": result.retrain}, {"model_version": result.model_version},
                 result.slices)
    return result.retrain
