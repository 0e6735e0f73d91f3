"""Stage failure alerts: a stage that fails tells Slack which stage it was and why, then fails.

The pipeline's exit handler also reports the run's final state, but Kubeflow only tells it that
*a* task failed; the stage itself knows its name and its error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from components.notify.logic import Message, run_failed, send

DEFAULT_OUTBOX = "slack_outbox.jsonl"


def deliver(message: Message) -> None:
    """Send to SLACK_WEBHOOK_URL, or to the outbox (CTLOOP_SLACK_OUTBOX) when none is set."""
    outbox = Path(os.environ.get("CTLOOP_SLACK_OUTBOX", DEFAULT_OUTBOX))
    send(message, os.environ.get("SLACK_WEBHOOK_URL") or None, outbox)


@contextlib.contextmanager
def alert_on_failure(stage: str, run_name: str) -> Iterator[None]:
    """Alert with the stage's name and error, then let the error fail the stage."""
    try:
        yield
    except Exception as error:
        deliver(run_failed(stage, f"{type(error).__name__}: {error}", run_name or None))
        raise
