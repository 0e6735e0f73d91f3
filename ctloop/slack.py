"""Slack: Block Kit building blocks, and `send`, which posts a message through an incoming
webhook or keeps it in a local outbox.

`send` retries server errors and connection failures a few times with a short backoff (slack_sdk's
own retry handlers); when no URL is given or Slack stays unreachable, the message is appended to
the outbox (one JSON line per message) and summarised on the console. A Slack failure never
raises: notifying must not fail the pipeline, and neither does a webhook URL that is not one (no
scheme, another scheme than http(s), unparsable): its message goes to the outbox with the reason.
The callers read SLACK_WEBHOOK_URL.

The webhook URL is a secret (its path is the key): no reason, console line, outbox entry or log
line quotes it, only its host; slack_sdk's own log lines, which quote it, are not emitted. Every
text of a message is passed through `ctloop.redact.redact_text` before it is posted or kept, so a
URL with credentials in an error message is masked there too. Slack reads &, < and > as markup
in mrkdwn and in a message's fallback text (`<!channel>` notifies everyone): `fields` and
`message` escape the values they are given, and callers `escape` every field a user controls
(error messages, file and class names, request ids) in the mrkdwn and the text they pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from ctloop.redact import redact_text

__all__ = ["Delivery", "Message", "clip", "escape", "fields", "header", "message", "section", "send"]

Message = dict[str, Any]

SECTION_LIMIT = 3000  # characters of a section's text (Slack's limit)
HEADER_LIMIT = 150  # characters of a header's plain text (Slack's limit)
_WEBHOOK_SCHEMES = ("https", "http")  # what slack_sdk's WebhookClient posts to
_EXPECTED_WEBHOOK = "expected https://hooks.slack.com/services/..."
# slack_sdk logs failed and retried requests with the full URL; give its client this logger, which
# emits nothing (`send` reports the outcome itself, redacted). Not registered with logging.
_SDK_LOGGER = logging.Logger("ctloop.slack.sdk", logging.CRITICAL + 1)


@dataclass(frozen=True)
class Delivery:
    """Where a message went.

    Attributes:
        ok: the message reached Slack, or (with no URL given) the outbox; False when Slack, the
            webhook URL or the outbox failed.
        channel: "slack" or "outbox".
        attempts: HTTP attempts made (0 when no usable URL was given).
        reason: why it did not reach Slack, or "" when it did.
        outbox: the outbox file the message was appended to, if it was.
    """

    ok: bool
    channel: str
    attempts: int
    reason: str
    outbox: Path | None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outbox"] = None if self.outbox is None else str(self.outbox)
        return data


def send(
    message: Message,
    webhook_url: str | None,
    outbox: Path,
    *,
    retries: int = 2,
    backoff_seconds: float = 0.5,
    timeout_seconds: float = 10.0,
) -> Delivery:
    """Post a message to Slack, or keep it in the outbox; never raises because of Slack.

    Args:
        message: a builder's `{"text": ..., "blocks": [...]}`.
        webhook_url: the Slack incoming-webhook URL; None or "": outbox only; one that is not an
            http(s) URL: outbox, with the reason.
        outbox: JSON-lines file the message is appended to when it does not reach Slack.
        retries: further attempts after a 5xx answer or a connection failure.
        backoff_seconds: wait before the first retry, doubled for each further one.
        timeout_seconds: per-attempt HTTP timeout.

    Returns:
        Where the message went and, when not to Slack, why.
    """
    secrets = _webhook_secrets(webhook_url or "")
    message = _redacted(message, secrets)
    if not webhook_url:
        return _to_outbox(message, Path(outbox), "no Slack webhook URL given", attempts=0, slack_failed=False)
    webhook_url = webhook_url.strip()
    problem = _webhook_problem(webhook_url)
    if problem is not None:
        return _to_outbox(message, Path(outbox), f"{problem}; {_EXPECTED_WEBHOOK}", attempts=0, slack_failed=True)
    retry = _TransientErrorRetry(max_retry_count=retries, interval_calculator=_Doubling(backoff_seconds))
    client = WebhookClient(webhook_url, timeout=int(max(1, timeout_seconds)), retry_handlers=[retry],
                           logger=_SDK_LOGGER)
    try:
        response = client.send_dict(message)
    except (OSError, HTTPException, ValueError) as error:
        reason = f"Slack unreachable after {retry.attempts} attempts ({redact_text(str(error), secrets)})"
        return _to_outbox(message, Path(outbox), reason, attempts=retry.attempts, slack_failed=True)
    if response.status_code == 200:
        return Delivery(ok=True, channel="slack", attempts=retry.attempts, reason="", outbox=None)
    answer = redact_text(repr(response.body), secrets)
    reason = f"Slack answered {response.status_code} {answer} after {retry.attempts} attempts"
    return _to_outbox(message, Path(outbox), reason, attempts=retry.attempts, slack_failed=True)


def _webhook_problem(url: str) -> str | None:
    """What makes `url` unusable as a webhook URL, in words that do not quote it; None if usable."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port: a bad one raises ValueError)
    except ValueError:
        return "the Slack webhook URL cannot be parsed as a URL"
    if any(character.isspace() or not character.isprintable() for character in url):
        return "the Slack webhook URL contains whitespace or control characters"
    if "://" not in url or not parts.scheme:
        return "the Slack webhook URL has no scheme"
    if parts.scheme.lower() not in _WEBHOOK_SCHEMES:
        return f"the Slack webhook URL's scheme is {parts.scheme!r}, not https"
    if not parts.hostname:
        return "the Slack webhook URL has no host"
    return None


def _webhook_secrets(url: str) -> list[str]:
    """The webhook URL as given and stripped, and its path (the key), which errors may quote alone."""
    try:
        path = urlsplit(url.strip()).path
    except ValueError:
        path = ""
    return [text for text in (url, url.strip(), path if len(path) > 1 else "") if text]


def _redacted(value: Any, secrets: list[str]) -> Any:
    """A copy of a message with `redact_text` applied to every string in it."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {key: _redacted(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, secrets) for item in value]
    return value


class _Doubling(RetryIntervalCalculator):
    """backoff, 2*backoff, 4*backoff, ... without jitter (a few retries, one client)."""

    def __init__(self, backoff_seconds: float) -> None:
        self.backoff_seconds = backoff_seconds

    def calculate_sleep_duration(self, current_attempt: int) -> float:
        return self.backoff_seconds * 2**current_attempt


class _TransientErrorRetry(RetryHandler):
    """Retry any 5xx answer and any failure to connect or read; count the attempts made."""

    def __init__(self, max_retry_count: int, interval_calculator: RetryIntervalCalculator) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=interval_calculator)
        self.attempts = 1

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is not None:
            return 500 <= response.status_code < 600
        return isinstance(error, (OSError, HTTPException))

    def prepare_for_next_attempt(self, **kwargs: Any) -> None:
        super().prepare_for_next_attempt(**kwargs)
        self.attempts += 1


def _to_outbox(message: Message, outbox: Path, reason: str, attempts: int, slack_failed: bool) -> Delivery:
    line = json.dumps({"time": time.time(), "reason": reason, "message": message}) + "\n"
    summary = message.get("text", "").splitlines()[0] if message.get("text") else "(no text)"
    try:
        outbox.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as error:
        reason = f"{reason}; outbox {outbox} not writable ({error.strerror})"
        print(f"[notify] NOT DELIVERED ({reason}): {summary}", flush=True)
        return Delivery(ok=False, channel="outbox", attempts=attempts, reason=reason, outbox=None)
    print(f"[notify] outbox {outbox} ({reason}): {summary}", flush=True)
    return Delivery(ok=not slack_failed, channel="outbox", attempts=attempts, reason=reason, outbox=outbox)


def message(text: str, blocks: list[dict[str, Any]], run_name: str | None) -> Message:
    if run_name:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"run {escape(run_name)}"}]})
    return {"text": text, "blocks": blocks}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, HEADER_LIMIT)}}


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text)}}


def fields(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{escape(value)}"} for name, value in pairs[:10]],
    }


def escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
