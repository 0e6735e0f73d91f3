"""notify: the Slack messages of a run (retraining started, deployed, not deployed, run failed)."""

from components.notify.logic import (
    Consensus,
    announce_deployed,
    announce_not_deployed,
    announce_retrain,
    announce_run_end,
    deployed,
    not_deployed,
    retrain_started,
)

__all__ = [
    "Consensus",
    "announce_deployed",
    "announce_not_deployed",
    "announce_retrain",
    "announce_run_end",
    "deployed",
    "not_deployed",
    "retrain_started",
]
