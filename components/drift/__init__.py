"""drift: the input-drift test on the champion's embeddings, and the run's retrain decision."""

from components.drift.logic import (
    DriftResult,
    check_drift,
    check_drift_from_registry,
    decide,
    decision_metrics,
    measure_drift,
)

__all__ = ["DriftResult", "check_drift", "check_drift_from_registry", "decide", "decision_metrics", "measure_drift"]
