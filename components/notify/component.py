"""kfp wrappers of the notify stage: one per Slack message, each forwarding to notify.logic."""

from kfp.dsl import Artifact, Input, PipelineTaskFinalStatus


def notify_retrain_op(decision: Input[Artifact], run_name: str):
    """Slack: retraining started, with the yield figures that tripped the monitor.

    Args:
        decision: the monitor's decision and figures (JSON).
        run_name: the pipeline run.
    """
    from pathlib import Path

    from components.notify.logic import announce_retrain

    announce_retrain(Path(decision.path), run_name)


def notify_deployed_op(old_version: str, new_version: str, status: str, decision: Input[Artifact],
                       kept_share: float, disagreement: float, run_name: str):
    """Slack: the challenger was deployed (or, status "superseded", another run's champion came first).

    Args:
        old_version: the champion version replaced.
        new_version: the new champion version.
        status: the deploy stage's status.
        decision: the analyze stage's decision with the metric deltas (JSON).
        kept_share: the share of the window the consensus stage kept.
        disagreement: the share of the window on which B1 and B2 disagreed.
        run_name: the pipeline run.
    """
    from pathlib import Path

    from components.notify.logic import Consensus, announce_deployed

    announce_deployed(old_version, new_version, Path(decision.path), run_name, Consensus(kept_share, disagreement),
                      status)


def notify_not_deployed_op(decision: Input[Artifact], kept_share: float, disagreement: float, run_name: str):
    """Slack: the challenger was not deployed, with the analyze stage's reasons.

    Args:
        decision: the analyze stage's decision with its reasons (JSON).
        kept_share: the share of the window the consensus stage kept.
        disagreement: the share of the window on which B1 and B2 disagreed.
        run_name: the pipeline run.
    """
    from pathlib import Path

    from components.notify.logic import Consensus, announce_not_deployed

    announce_not_deployed(Path(decision.path), run_name, Consensus(kept_share, disagreement))


def notify_run_end_op(status: PipelineTaskFinalStatus, run_name: str):
    """Exit handler: alert when the run failed (the failing stage has already said why).

    Args:
        status: Kubeflow's final status of the pipeline's tasks.
        run_name: the pipeline run.
    """
    from components.notify.logic import announce_run_end

    announce_run_end(status.state, status.error_message, run_name)
