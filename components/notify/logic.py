"""notify: the Slack messages of a run, as Block Kit: retraining started, deployed, not deployed.

Each builder returns `{"text": fallback, "blocks": [...]}`, the body of a webhook post, which
`ctloop.alerts.deliver` sends (the run-failed message is ctloop.alerts.run_failed: every stage
sends it when it fails). The `announce_*` functions are the stage: they read the decision
documents the monitor and analyze stages wrote, build the message and deliver it.

Slack reads &, < and > in mrkdwn as markup (`<!channel>` notifies everyone), the fallback text
included, so every string a builder interpolates that it did not write itself (reasons, versions,
metric names) is escaped with `slack.escape`, in the text as in the blocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctloop import slack
from ctloop.alerts import deliver, run_failed
from ctloop.slack import Delivery, Message


@dataclass(frozen=True)
class Consensus:
    """What the consensus stage saw in the window: the share it kept and how often B1 and B2
    disagreed (1 - disagreement estimates their accuracy there without labels)."""

    kept_share: float
    disagreement: float

    def sentence(self) -> str:
        return (f"Consensus kept {self.kept_share:.1%} of the window; B1 and B2 disagreed on "
                f"{self.disagreement:.1%} (estimated branch accuracy {1 - self.disagreement:.3f}).")


# The fields of the monitor's decision (MonitorResult.to_dict()) that the message shows.
_RETRAIN_FIELDS = ("yield_value", "threshold_used", "window_size", "model_version", "mode", "baseline", "reason")
_RETRAIN_OPTIONAL = ("signals", "drift")  # the drift stage's decision adds them to the monitor's
_SUCCEEDED = "SUCCEEDED"


def announce_retrain(decision_path: Path, run_name: str | None = None) -> Delivery:
    """Slack: retraining started, with the figures of the monitor's decision JSON.

    The monitor writes its whole MonitorResult (MonitorResult.to_dict()), which also holds what
    the message does not show (`retrain`, `truncated_tail`, `broken_lines`); the message's
    figures are picked from it by name.

    Args:
        decision_path: the monitor's decision (JSON).
        run_name: the pipeline run, shown as context.
    """
    figures = _read_decision(decision_path, _RETRAIN_FIELDS, "the monitor's MonitorResult.to_dict()")
    optional = {name: figures[name] for name in _RETRAIN_OPTIONAL if name in figures}
    return deliver(retrain_started(**{name: figures[name] for name in _RETRAIN_FIELDS}, **optional,
                                   run_name=run_name))


def announce_deployed(old_version: str, new_version: str, decision_path: Path, run_name: str | None = None,
                      consensus: Consensus | None = None, status: str = "deployed") -> Delivery:
    """Slack: the challenger was deployed, with the accuracy deltas of analyze's decision JSON;
    or, when the deploy stage's status is "superseded", that another run's champion came first.

    Args:
        old_version: the champion version replaced (superseded: the champion that came first).
        new_version: the new champion version (superseded: the challenger, not deployed).
        decision_path: the analyze stage's decision (JSON with "deltas" and "champion_version").
        run_name: the pipeline run, shown as context.
        consensus: the consensus stage's kept share and B1/B2 disagreement on the window.
        status: the deploy stage's status, "deployed" or "superseded".
    """
    decision = _read_decision(decision_path, ("deltas", "champion_version"),
                              "the analyze stage's AnalysisResult.decision()")
    if status == "superseded":
        reason = (f"Superseded: v{new_version} was judged against champion v{decision['champion_version']}, but "
                  f"another run deployed v{old_version} meanwhile. Nothing was changed; the next run judges "
                  f"against v{old_version}.")
        return deliver(not_deployed([reason], run_name=run_name, consensus=consensus))
    return deliver(deployed(old_version, new_version, decision["deltas"], run_name=run_name, consensus=consensus))


def announce_not_deployed(decision_path: Path, run_name: str | None = None,
                          consensus: Consensus | None = None) -> Delivery:
    """Slack: the challenger was not deployed, with the reasons of analyze's decision JSON.

    Args:
        decision_path: the analyze stage's decision (JSON with "reasons").
        run_name: the pipeline run, shown as context.
        consensus: the consensus stage's kept share and B1/B2 disagreement on the window.
    """
    decision = _read_decision(decision_path, ("reasons",), "the analyze stage's AnalysisResult.decision()")
    return deliver(not_deployed(decision["reasons"], run_name=run_name, consensus=consensus))


def announce_run_end(state: str, error_message: str | None, run_name: str | None = None) -> Delivery | None:
    """The exit handler: alert unless the run succeeded. Kubeflow only tells it that a task
    failed, not which or why (the failing stage has already alerted with its own error), so
    the alert names the pipeline and Kubeflow's message, or the state when there is none.

    Args:
        state: Kubeflow's final state of the run's tasks ("SUCCEEDED", "FAILED", ...).
        error_message: Kubeflow's error message, if any.
        run_name: the pipeline run, shown as context.

    Returns:
        The alert's delivery, or None when the run succeeded and nothing was sent.
    """
    print(f"run {run_name}: {state}")
    if state == _SUCCEEDED:
        return None
    return deliver(run_failed("pipeline", error_message or state, run_name=run_name))


def _read_decision(path: Path, required: Sequence[str], written_by: str) -> dict[str, Any]:
    """A decision document of an earlier stage, with the keys this message needs."""
    try:
        decision = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: decision is not JSON ({error}); expected {written_by} as JSON") from error
    missing = [key for key in required if not isinstance(decision, dict) or key not in decision]
    if missing:
        raise ValueError(f"{path}: decision lacks {', '.join(missing)}; expected {written_by} as JSON")
    return decision


def retrain_started(
    yield_value: float,
    threshold_used: float | None,
    window_size: int,
    model_version: str,
    mode: str = "confidence",
    baseline: float | None = None,
    reason: str = "",
    run_name: str | None = None,
    signals: Sequence[str] = ("yield",),
    drift: dict[str, Any] | None = None,
) -> Message:
    """A run started because the champion's yield dropped or its inputs drifted; the figures.

    The argument names are MonitorResult's field names, but MonitorResult.to_dict() holds more
    fields than these, so it cannot be passed as `**kwargs`: announce_retrain picks these
    fields out of the monitor's decision JSON.

    Args:
        yield_value: the window's yield.
        threshold_used: the value it fell below (None when there was none).
        window_size: predictions in the window.
        model_version: the champion version monitored.
        mode: the yield the monitor measured (confidence, pass_rate, estimated_accuracy, accuracy).
        baseline: the champion's baseline yield, when the baseline rule was used.
        reason: the monitor's sentence (the drift stage's, which includes it).
        run_name: the pipeline run, shown as context.
        signals: the signals that retrain: "yield", "drift" or both.
        drift: the drift stage's DriftResult as a dict, when it measured.
    """
    fields = [
        ("Tripped", " and ".join(signals) or "-"),
        ("Yield", f"{yield_value:.3f} ({mode})"),
        ("Threshold", "-" if threshold_used is None else f"{threshold_used:.3f}"),
        ("Window", f"{window_size} predictions"),
        ("Champion", f"version {model_version}"),
    ]
    if baseline is not None:
        fields.append(("Baseline", f"{baseline:.3f}"))
    if drift and drift["measured"]:
        fields.append(("Input drift", f"p = {drift['p_value']:.4f} (distance {drift['distance']:.4f})"))
        drifted = [name for name, figures in drift["slices"].items() if figures["drifted"]]
        if drifted:
            fields.append(("Drifted slices", slack.escape(", ".join(drifted))))
    text = f"Retraining started on {' and '.join(signals)}: champion v{slack.escape(str(model_version))}"
    text += f" yield {yield_value:.3f}"
    if threshold_used is not None and "yield" in signals:
        text += f" < {threshold_used:.3f}"
    if drift and "drift" in signals:
        text += f", input drift p = {drift['p_value']:.4f}"
    blocks = [slack.header("Retraining started"), slack.fields(fields)]
    if reason:
        blocks.append(slack.section(slack.escape(reason)))
    return slack.message(text, blocks, run_name)


def deployed(
    old_version: str,
    new_version: str,
    metric_deltas: Mapping[str, float],
    run_name: str | None = None,
    consensus: Consensus | None = None,
) -> Message:
    """A challenger became the champion.

    Args:
        old_version: the champion version replaced.
        new_version: the version now serving.
        metric_deltas: metric name -> new minus old (e.g. {"accuracy (new data)": 0.12}).
        run_name: the pipeline run, shown as context.
        consensus: what the consensus stage saw, shown under the deltas.
    """
    text = f"Deployed champion v{slack.escape(new_version)} (was v{slack.escape(old_version)})"
    lines = [f"*{slack.escape(name)}*: {delta:+.3f}" for name, delta in metric_deltas.items()]
    blocks = [
        slack.header("New champion deployed"),
        slack.section(f"*v{slack.escape(old_version)}* \u2192 *v{slack.escape(new_version)}*"),
    ]
    if lines:
        blocks.append(slack.section(slack.clip("\n".join(lines))))
    if consensus is not None:
        blocks.append(slack.section(consensus.sentence()))
    return slack.message(text, blocks, run_name)


def not_deployed(reasons: Sequence[str], run_name: str | None = None, consensus: Consensus | None = None) -> Message:
    """The challenger was not deployed; the analysis stage's reasons.

    Args:
        reasons: one sentence per reason.
        run_name: the pipeline run, shown as context.
        consensus: what the consensus stage saw, shown under the reasons (a low kept share or a
            high disagreement often explains a challenger without enough evidence).
    """
    text = f"Challenger not deployed: {slack.escape(' '.join(reasons)) or 'no reason given'}"
    bullets = "\n".join(f"\u2022 {slack.escape(reason)}" for reason in reasons) or "no reason given"
    blocks = [slack.header("Challenger not deployed"), slack.section(slack.clip(bullets))]
    if consensus is not None:
        blocks.append(slack.section(consensus.sentence()))
    return slack.message(text, blocks, run_name)
