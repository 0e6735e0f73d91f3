"""notify: the Slack messages of a run, as Block Kit: retraining started, deployed, not deployed.

Each builder returns `{"text": fallback, "blocks": [...]}`, the body of a webhook post, which
`ctloop.alerts.deliver` sends (the run-failed message is ctloop.alerts.run_failed: every stage
sends it when it fails).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ctloop import slack
from ctloop.slack import Message

__all__ = ["deployed", "not_deployed", "retrain_started"]


def retrain_started(
    yield_value: float,
    threshold_used: float | None,
    window_size: int,
    model_version: str,
    mode: str = "confidence",
    baseline: float | None = None,
    reason: str = "",
    run_name: str | None = None,
) -> Message:
    """A run started because the champion's yield dropped; the monitor's figures (the argument
    names are MonitorResult's fields, so `retrain_started(**figures)` works on its dict).

    Args:
        yield_value: the window's yield.
        threshold_used: the value it fell below (None when there was none).
        window_size: predictions in the window.
        model_version: the champion version monitored.
        mode: "confidence" or "accuracy".
        baseline: the champion's baseline yield, when the baseline rule was used.
        reason: the monitor's sentence.
        run_name: the pipeline run, shown as context.
    """
    fields = [
        ("Yield", f"{yield_value:.3f} ({mode})"),
        ("Threshold", "-" if threshold_used is None else f"{threshold_used:.3f}"),
        ("Window", f"{window_size} predictions"),
        ("Champion", f"version {model_version}"),
    ]
    if baseline is not None:
        fields.append(("Baseline", f"{baseline:.3f}"))
    text = f"Retraining started: champion v{model_version} yield {yield_value:.3f}"
    if threshold_used is not None:
        text += f" < {threshold_used:.3f}"
    blocks = [slack.header("Retraining started"), slack.fields(fields)]
    if reason:
        blocks.append(slack.section(slack.escape(reason)))
    return slack.message(text, blocks, run_name)


def deployed(
    old_version: str,
    new_version: str,
    metric_deltas: Mapping[str, float],
    run_name: str | None = None,
) -> Message:
    """A challenger became the champion.

    Args:
        old_version: the champion version replaced.
        new_version: the version now serving.
        metric_deltas: metric name -> new minus old (e.g. {"accuracy (new data)": 0.12}).
        run_name: the pipeline run, shown as context.
    """
    text = f"Deployed champion v{new_version} (was v{old_version})"
    lines = [f"*{slack.escape(name)}*: {delta:+.3f}" for name, delta in metric_deltas.items()]
    blocks = [
        slack.header("New champion deployed"),
        slack.section(f"*v{slack.escape(old_version)}* \u2192 *v{slack.escape(new_version)}*"),
    ]
    if lines:
        blocks.append(slack.section(slack.clip("\n".join(lines))))
    return slack.message(text, blocks, run_name)


def not_deployed(reasons: Sequence[str], run_name: str | None = None) -> Message:
    """The challenger was not deployed; the analysis stage's reasons.

    Args:
        reasons: one sentence per reason.
        run_name: the pipeline run, shown as context.
    """
    text = f"Challenger not deployed: {' '.join(reasons) or 'no reason given'}"
    bullets = "\n".join(f"\u2022 {slack.escape(reason)}" for reason in reasons) or "no reason given"
    blocks = [slack.header("Challenger not deployed"), slack.section(slack.clip(bullets))]
    return slack.message(text, blocks, run_name)
