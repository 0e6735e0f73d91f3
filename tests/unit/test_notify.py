"""notify: Block Kit builders, and delivery to a real webhook receiver on 127.0.0.1 or the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import components.notify
from components.monitor.logic import MonitorResult
from components.notify.logic import deployed, not_deployed, retrain_started
from ctloop.alerts import run_failed
from ctloop.slack import send
from serving.server import free_port
from slack_support import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/hook"


def outbox_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_public_names():
    assert sorted(components.notify.__all__) == ["deployed", "not_deployed", "retrain_started"]


def test_retrain_started_shows_the_monitor_figures():
    message = retrain_started(0.62, 0.7, 300, "3", mode="confidence", baseline=0.85,
                              reason="yield 0.620 is below 0.800", run_name="ct-42")
    assert message["text"] == "Retraining started: champion v3 yield 0.620 < 0.700"
    header, fields, reason, context = message["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Retraining started"}}
    assert [f["text"] for f in fields["fields"]] == [
        "*Yield*\n0.620 (confidence)", "*Threshold*\n0.700", "*Window*\n300 predictions", "*Champion*\nversion 3",
        "*Baseline*\n0.850",
    ]
    assert reason["text"]["text"] == "yield 0.620 is below 0.800"
    assert context == {"type": "context", "elements": [{"type": "mrkdwn", "text": "run ct-42"}]}


def test_retrain_started_takes_the_monitor_result_figures():
    result = MonitorResult(retrain=True, yield_value=0.5, baseline=None, threshold_used=0.7, mode="accuracy",
                           window_size=10, model_version="2", reason="yield 0.500 < 0.700", truncated_tail=False)
    figures = {k: v for k, v in result.to_dict().items() if k not in ("retrain", "truncated_tail", "broken_lines")}
    message = retrain_started(**figures)
    assert message["text"] == "Retraining started: champion v2 yield 0.500 < 0.700"
    assert message["blocks"][1]["fields"][0]["text"] == "*Yield*\n0.500 (accuracy)"
    assert len(message["blocks"][1]["fields"]) == 4  # no baseline with a fixed threshold


def test_deployed_shows_versions_and_signed_deltas():
    message = deployed("3", "4", {"accuracy (new data)": 0.1234, "macro-F1 (golden)": -0.004})
    assert message["text"] == "Deployed champion v4 (was v3)"
    assert message["blocks"][1]["text"]["text"] == "*v3* \u2192 *v4*"
    assert message["blocks"][2]["text"]["text"] == "*accuracy (new data)*: +0.123\n*macro-F1 (golden)*: -0.004"


def test_not_deployed_lists_the_reasons_escaped():
    message = not_deployed(["gain 0.004 < min_improvement 0.01", "golden accuracy fell by 0.05 > 0.02 & more"])
    assert message["text"] == ("Challenger not deployed: gain 0.004 < min_improvement 0.01 "
                               "golden accuracy fell by 0.05 > 0.02 & more")
    assert message["blocks"][1]["text"]["text"] == (
        "\u2022 gain 0.004 &lt; min_improvement 0.01\n\u2022 golden accuracy fell by 0.05 &gt; 0.02 &amp; more"
    )
    assert not_deployed([])["text"] == "Challenger not deployed: no reason given"


def test_run_failed_names_the_stage_and_clips_a_long_error():
    error = "ValidationError: collected.npz: validation failed - finite values\n" + "x" * 5000
    message = run_failed("validate", error)
    assert message["text"] == "Run failed in stage validate: ValidationError: collected.npz: validation failed - finite values"
    assert message["blocks"][0]["text"]["text"] == "Run failed: validate"
    code = message["blocks"][2]["text"]["text"]
    assert code.startswith("```ValidationError") and code.endswith("\u2026```") and len(code) <= 3000


def test_without_url_the_message_goes_to_the_outbox_and_console(tmp_path, capsys):
    outbox = tmp_path / "notify" / "outbox.jsonl"
    message = not_deployed(["no gain"])
    delivery = send(message, None, outbox)
    assert (delivery.ok, delivery.channel, delivery.attempts, delivery.outbox) == (True, "outbox", 0, outbox)
    send(run_failed("train", "boom"), "", outbox)
    lines = outbox_lines(outbox)
    assert [line["message"] for line in lines] == [message, run_failed("train", "boom")]
    assert lines[0]["reason"] == "no Slack webhook URL given"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"[notify] outbox {outbox} (no Slack webhook URL given): Challenger not deployed: no gain"
    assert delivery.to_dict()["outbox"] == str(outbox)


def test_posts_the_message_to_the_webhook(receiver, tmp_path):
    message = deployed("1", "2", {"accuracy": 0.2})
    delivery = send(message, receiver.url, tmp_path / "outbox.jsonl")
    assert (delivery.ok, delivery.channel, delivery.attempts, delivery.reason) == (True, "slack", 1, "")
    assert receiver.bodies == [message]
    assert not (tmp_path / "outbox.jsonl").exists()


def test_server_errors_are_retried(receiver, tmp_path):
    receiver.statuses = [500, 503]
    delivery = send(not_deployed(["x"]), receiver.url, tmp_path / "outbox.jsonl", backoff_seconds=0.01)
    assert (delivery.ok, delivery.channel, delivery.attempts) == (True, "slack", 3)
    assert len(receiver.bodies) == 3


def test_persistent_server_error_ends_in_the_outbox_without_raising(receiver, tmp_path, capsys):
    receiver.statuses = [500] * 10
    outbox = tmp_path / "outbox.jsonl"
    message = run_failed("deploy", "smoke test failed")
    delivery = send(message, receiver.url, outbox, retries=2, backoff_seconds=0.01)
    assert (delivery.ok, delivery.channel, delivery.attempts) == (False, "outbox", 3)
    assert delivery.reason == "Slack answered 500 'server_error' after 3 attempts"
    assert len(receiver.bodies) == 3
    assert outbox_lines(outbox)[0]["message"] == message
    assert "Slack answered 500" in capsys.readouterr().out


def test_client_errors_are_not_retried(receiver, tmp_path):
    receiver.statuses = [400]
    delivery = send(not_deployed(["x"]), receiver.url, tmp_path / "outbox.jsonl", backoff_seconds=0.01)
    assert (delivery.ok, delivery.attempts) == (False, 1)
    assert delivery.reason == "Slack answered 400 'invalid_blocks' after 1 attempts"
    assert len(outbox_lines(tmp_path / "outbox.jsonl")) == 1


def test_unreachable_slack_never_raises(closed_port_url, tmp_path):
    delivery = send(not_deployed(["x"]), closed_port_url, tmp_path / "outbox.jsonl", retries=1, backoff_seconds=0.01)
    assert (delivery.ok, delivery.channel, delivery.attempts) == (False, "outbox", 2)
    assert delivery.reason.startswith("Slack unreachable after 2 attempts (")
    assert "Connection refused" in delivery.reason
    assert len(outbox_lines(tmp_path / "outbox.jsonl")) == 1


def test_unwritable_outbox_is_reported_not_raised(tmp_path, capsys):
    outbox = tmp_path / "outbox.jsonl"
    outbox.mkdir()  # a directory where the file should be
    delivery = send(not_deployed(["x"]), None, outbox)
    assert (delivery.ok, delivery.outbox) == (False, None)
    assert delivery.reason == f"no Slack webhook URL given; outbox {outbox} not writable (Is a directory)"
    assert capsys.readouterr().out.startswith("[notify] NOT DELIVERED (no Slack webhook URL given; outbox ")
