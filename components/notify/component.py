"""kfp wrappers of the notify stage: one per Slack message, each forwarding to notify.logic."""

from kfp.dsl import Artifact, Input, PipelineTaskFinalStatus


def notify_retrain_op(decision: Input[Artifact], run_name: str):
    """Slack: retraining started, with the yield figures that tripped the monitor.

    Args:
        decision: the monitor's decision and figures (JSON).
        run_name: the pipeline run.
    """
    import json
    from pathlib import Path

    from ctloop.alerts import deliver
    from components.notify.logic import retrain_started

    figures = json.loads(Path(decision.path).read_text())
    deliver(retrain_started(figures["yield_value"], figures["threshold_used"], figures["window_size"],
                            figures["model_version"], mode=figures["mode"], baseline=figures["baseline"],
                            reason=figures["reason"], run_name=run_name))


def notify_deployed_op(old_version: str, new_version: str, decision: Input[Artifact], run_name: str):
    """Slack: the challenger was deployed.

    Args:
        old_version: the champion version replaced.
        new_version: the new champion version.
        decision: the analyze stage's decision with the metric deltas (JSON).
        run_name: the pipeline run.
    """
    import json
    from pathlib import Path

    from ctloop.alerts import deliver
    from components.notify.logic import deployed

    deltas = json.loads(Path(decision.path).read_text())["deltas"]
    deliver(deployed(old_version, new_version, deltas, run_name=run_name))


def notify_not_deployed_op(decision: Input[Artifact], run_name: str):
    """Slack: the challenger was not deployed, with the analyze stage's reasons.

    Args:
        decision: the analyze stage's decision with its reasons (JSON).
        run_name: the pipeline run.
    """
    import json
    from pathlib import Path

    from ctloop.alerts import deliver
    from components.notify.logic import not_deployed

    deliver(not_deployed(json.loads(Path(decision.path).read_text())["reasons"], run_name=run_name))


def notify_run_end_op(status: PipelineTaskFinalStatus, run_name: str):
    """Exit handler: alert when the run failed (the failing stage has already said why).

    Args:
        status: Kubeflow's final status of the pipeline's tasks.
        run_name: the pipeline run.
    """
    from ctloop.alerts import deliver
    from ctloop.alerts import run_failed

    print(f"run {run_name}: {status.state}")
    if status.state != "SUCCEEDED":
        deliver(run_failed("pipeline", status.error_message or status.state, run_name=run_name))
