"""notify: Slack Block Kit messages about a run, with a local outbox when Slack is unavailable."""

from components.notify.logic import Delivery, deployed, not_deployed, retrain_started, run_failed, send

__all__ = ["Delivery", "deployed", "not_deployed", "retrain_started", "run_failed", "send"]
