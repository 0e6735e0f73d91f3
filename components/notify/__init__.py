"""notify: the Slack messages of a run (retraining started, deployed, not deployed)."""

from components.notify.logic import deployed, not_deployed, retrain_started

__all__ = ["deployed", "not_deployed", "retrain_started"]
