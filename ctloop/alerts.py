"""Stage failure alerts: a stage that fails tells Slack which stage it was and why, then fails.

The pipeline's exit handler also reports the run's final state, but Kubeflow only tells it that
*a* task failed; the stage itself knows its name and its error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ctloop import slack

DEFAULT_OUTBOX = "slack_outbox.jsonl"


def deliver(message: slack.Message) -> slack.Delivery:
    """Send to SLACK_WEBHOOK_URL, or to the outbox (CTLOOP_SLACK_OUTBOX) when none is set."""
    outbox = Path(os.environ.get("CTLOOP_SLACK_OUTBOX", DEFAULT_OUTBOX))
    return slack.send(message, os.environ.get("SLACK_WEBHOOK_URL") or None, outbox)


@contextlib.contextmanager
def alert_on_failure(stage: str, run_name: str) -> Iterator[None]:
    """Alert with the stage's name and error, then let the error fail the stage."""
    try:
        yield
    except Exception as error:
        deliver(run_failed(stage, f"{type(error).__name__}: {error}", run_name or None))
        raise


def run_failed(stage: str, error: str, run_name: str | None = None) -> slack.Message:
    """A stage failed and the run stopped; the champion is unchanged. The error (which may quote
    file names, class names, request ids) is escaped wherever it is shown; `slack.send` masks URLs
    with credentials in it.

    Args:
        stage: the stage that failed.
        error: its error message.
        run_name: the pipeline run, shown as context.
    """
    text = f"Run failed in stage {stage}: {slack.escape(error.splitlines()[0]) if error else 'no message'}"
    code = slack.clip(slack.escape(error.replace("```", "'''")) or "no message", slack.SECTION_LIMIT - 8)
    blocks = [
        slack.header(f"Run failed: {stage}"),
        slack.section(f"Stage *{slack.escape(stage)}* failed; the champion is unchanged."),
        slack.section(f"```{code}```"),
    ]
    return slack.message(text, blocks, run_name)
