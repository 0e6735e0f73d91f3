"""notify: the Slack messages of a run (retraining started, deployed, not deployed, run failed)."""
