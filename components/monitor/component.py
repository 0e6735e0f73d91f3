"""kfp wrapper of the monitor stage: forwards to components.monitor.logic.check_yield."""

from kfp.dsl import Artifact, Dataset, Metrics, Output


def monitor_op(
    store_dir: str,
    recent_window: int,
    yield_threshold: float,
    use_yield_threshold: bool,
    yield_drop_tolerance: float,
    yield_floor: float,
    yield_confidence: float,
    run_name: str,
    window: Output[Dataset],
    decision: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """Decide whether the champion's yield calls for retraining; returns that decision.

    Args:
        store_dir: prediction store root holding predictions.jsonl (and feedback.jsonl if any).
        recent_window: number of newest predictions that form the window.
        yield_threshold: retrain when yield falls below it (if use_yield_threshold).
        use_yield_threshold: False applies the baseline rule instead of the fixed threshold.
        yield_drop_tolerance: baseline rule: allowed drop below the champion's baseline yield.
        yield_floor: baseline rule: never tolerate a yield below this.
        yield_confidence: confidence at which a prediction counts towards yield.
        run_name: the pipeline run, for alerts.
        window: the window's prediction records (JSON lines), for collect.
        decision: the decision and its figures (JSON), for the Slack message.
        metrics: the yield figures.
    """
    import json
    from pathlib import Path

    from ctloop.alerts import alert_on_failure
    from components.monitor.logic import check_yield

    with alert_on_failure("monitor", run_name):
        store = Path(store_dir)
        feedback = store / "feedback.jsonl"
        result = check_yield(
            store / "predictions.jsonl", recent_window,
            yield_threshold if use_yield_threshold else None,
            yield_drop_tolerance, yield_floor, yield_confidence,
            feedback_log=feedback if feedback.exists() else None, window_out=Path(window.path),
        )
    for name in ("yield_value", "window_size"):
        metrics.log_metric(name, float(getattr(result, name)))
    if result.baseline is not None:
        metrics.log_metric("baseline", result.baseline)
    Path(decision.path).write_text(json.dumps(result.to_dict()))
    print(result.reason)
    return result.retrain
