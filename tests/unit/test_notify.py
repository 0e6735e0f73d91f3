"""notify: Block Kit builders, and delivery to a real webhook receiver on 127.0.0.1 or the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from components.analyze.logic import AnalysisResult, HoldoutEvidence, scores_from_labels
from components.monitor.logic import MonitorResult, check_store_yield
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
from ctloop.alerts import run_failed
from ctloop.slack import send
from ctloop.process import free_port
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


@pytest.fixture
def outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ctloop.alerts.deliver writes without a webhook URL (as in a local run)."""
    path = tmp_path / "slack_outbox.jsonl"
    monkeypatch.setenv("CTLOOP_SLACK_OUTBOX", str(path))
    return path


def test_retrain_started_shows_the_monitor_figures():
    message = retrain_started(0.62, 0.7, 300, "3", mode="confidence", baseline=0.85,
                              reason="yield 0.620 is below 0.800", run_name="ct-42")
    assert message["text"] == "Retraining started on yield: champion v3 yield 0.620 < 0.700"
    header, fields, reason, context = message["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Retraining started"}}
    assert [f["text"] for f in fields["fields"]] == [
        "*Tripped*\nyield", "*Yield*\n0.620 (confidence)", "*Threshold*\n0.700", "*Window*\n300 predictions", "*Champion*\nversion 3",
        "*Baseline*\n0.850",
    ]
    assert reason["text"]["text"] == "yield 0.620 is below 0.800"
    assert context == {"type": "context", "elements": [{"type": "mrkdwn", "text": "run ct-42"}]}


def test_retrain_started_says_which_signal_tripped():
    """Input drift with the yield still fine: Slack names drift, its p-value and the slice."""
    drift = {"measured": True, "p_value": 0.002, "distance": 0.0312,
             "slices": {"line-1": {"drifted": False}, "camera-2": {"drifted": True}}}
    message = retrain_started(0.91, 0.7, 300, "3", reason="...", signals=["drift"], drift=drift)
    assert message["text"] == "Retraining started on drift: champion v3 yield 0.910, input drift p = 0.0020"
    shown = [f["text"] for f in message["blocks"][1]["fields"]]
    assert shown[0] == "*Tripped*\ndrift"
    assert shown[-2:] == ["*Input drift*\np = 0.0020 (distance 0.0312)", "*Drifted slices*\ncamera-2"]
    both = retrain_started(0.5, 0.7, 300, "3", signals=["yield", "drift"], drift=drift)
    assert both["text"] == "Retraining started on yield and drift: champion v3 yield 0.500 < 0.700, input drift p = 0.0020"


def test_retrain_started_does_not_take_the_whole_monitor_result():
    """What its docstring says: MonitorResult.to_dict() holds more than the message takes."""
    result = MonitorResult(retrain=True, yield_value=0.5, baseline=None, threshold_used=0.7, mode="accuracy",
                           window_size=10, model_version="2", reason="yield 0.500 < 0.700", truncated_tail=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'retrain'"):
        retrain_started(**result.to_dict())


def test_announce_retrain_reads_the_monitors_decision(prediction_store, tmp_path, outbox):
    """The real path: the decision file the monitor stage writes, read by the notify stage."""
    prediction_store.log_many([0.95] * 5 + [0.5] * 5, version="2")
    decision = tmp_path / "monitor" / "decision.json"
    result = check_store_yield(prediction_store.root, 10, 0.7, True, 0.05, 0.6, 0.9, tmp_path / "window.jsonl",
                               decision)
    assert result.retrain
    delivery = announce_retrain(decision, "ct-7")
    assert (delivery.ok, delivery.channel, delivery.outbox) == (True, "outbox", outbox)
    (line,) = outbox_lines(outbox)
    expected = retrain_started(0.5, 0.7, 10, "2", mode="confidence", baseline=None, reason=result.reason,
                               run_name="ct-7")
    assert line["message"] == expected
    assert expected["text"] == "Retraining started on yield: champion v2 yield 0.500 < 0.700"
    assert len(expected["blocks"][1]["fields"]) == 5  # no baseline with a fixed threshold


def test_announce_retrain_shows_the_baseline_of_the_baseline_rule(prediction_store, tmp_path, outbox):
    prediction_store.log_many([0.95] * 10)  # baseline 1.0
    prediction_store.log_many([0.95] * 5 + [0.5] * 5)
    decision = tmp_path / "decision.json"
    check_store_yield(prediction_store.root, 10, 0.0, False, 0.05, 0.6, 0.9, tmp_path / "window.jsonl", decision)
    announce_retrain(decision, "ct-8")
    fields = outbox_lines(outbox)[0]["message"]["blocks"][1]["fields"]
    assert [field["text"] for field in fields][2:] == [
        "*Threshold*\n0.950", "*Window*\n10 predictions", "*Champion*\nversion 1", "*Baseline*\n1.000"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"yield_value": 0.5}', r"decision.json: decision lacks threshold_used, window_size, model_version, "
                                 r"mode, baseline, reason; expected the monitor's MonitorResult.to_dict\(\) as JSON"),
        ("[1, 2]", r"decision.json: decision lacks yield_value, "),
        ('{"yield', r"decision.json: decision is not JSON \(Unterminated string"),
    ],
)
def test_announce_retrain_names_a_bad_decision_file(tmp_path, outbox, content, message):
    decision = tmp_path / "decision.json"
    decision.write_text(content)
    with pytest.raises(ValueError, match=message):
        announce_retrain(decision, "ct-9")
    assert not outbox.exists()


def analysis(champion_correct: int, challenger_correct: int) -> AnalysisResult:
    """An AnalysisResult of 10 holdout and 10 golden samples of two classes."""
    truth = np.array([0, 1] * 5)

    def scores(correct: int):
        predicted = np.where(np.arange(10) < correct, truth, 1 - truth)
        return {data_set: scores_from_labels(truth, predicted, 2) for data_set in ("holdout", "golden")}

    champion, challenger = scores(champion_correct), scores(challenger_correct)
    deploy = challenger_correct > champion_correct
    return AnalysisResult(deploy, ["Pass: better." if deploy else "Fail: gain < 0.01 & more"], ["0", "1"],
                          {"champion": champion, "challenger": challenger}, 0.01, 0.02, Path("report.md"),
                          HoldoutEvidence([5, 5], 3, 0, 0.125), 2, 0.05)


def test_announce_deployed_reads_the_deltas_of_the_analyze_decision(tmp_path, outbox):
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps(analysis(6, 9).decision("3")))
    announce_deployed("3", "4", decision, "ct-10")
    message = outbox_lines(outbox)[0]["message"]
    assert message == deployed("3", "4", {"holdout accuracy": 0.3, "golden accuracy": 0.3}, run_name="ct-10")
    assert message["blocks"][2]["text"]["text"] == "*holdout accuracy*: +0.300\n*golden accuracy*: +0.300"


def test_a_superseded_deploy_is_announced_as_not_deployed_naming_both_champions(tmp_path, outbox):
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps(analysis(6, 9).decision("3")))
    announce_deployed("5", "4", decision, "ct-16", status="superseded")
    message = outbox_lines(outbox)[0]["message"]
    assert message == not_deployed(["Superseded: v4 was judged against champion v3, but another run deployed v5 "
                                    "meanwhile. Nothing was changed; the next run judges against v5."],
                                   run_name="ct-16")


def test_announce_not_deployed_reads_the_reasons_of_the_analyze_decision(tmp_path, outbox):
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps(analysis(9, 6).decision("3")))
    announce_not_deployed(decision, "ct-11")
    message = outbox_lines(outbox)[0]["message"]
    assert message == not_deployed(["Fail: gain < 0.01 & more"], run_name="ct-11")


def test_both_outcomes_show_what_consensus_saw(tmp_path, outbox):
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps(analysis(9, 6).decision("3")))
    consensus = Consensus(kept_share=0.45, disagreement=0.125)
    announce_not_deployed(decision, "ct-15", consensus)
    announce_deployed("3", "4", decision, "ct-15", consensus)
    expected = ("Consensus kept 45.0% of the window; B1 and B2 disagreed on 12.5% "
                "(estimated branch accuracy 0.875).")
    for message in (line["message"] for line in outbox_lines(outbox)):
        assert expected in [block.get("text", {}).get("text") for block in message["blocks"]]


def test_announce_deployed_names_a_decision_without_deltas(tmp_path, outbox):
    decision = tmp_path / "decision.json"
    decision.write_text(json.dumps({"reasons": []}))
    with pytest.raises(ValueError, match=r"decision lacks deltas, champion_version; expected the analyze stage's"):
        announce_deployed("3", "4", decision, "ct-12")


def test_announce_run_end_is_silent_when_the_run_succeeded(outbox, capsys):
    assert announce_run_end("SUCCEEDED", None, "ct-13") is None
    assert not outbox.exists()
    assert capsys.readouterr().out == "run ct-13: SUCCEEDED\n"


@pytest.mark.parametrize(
    ("state", "error_message", "shown"),
    [("FAILED", "task train failed", "task train failed"), ("CANCELLED", None, "CANCELLED"),
     ("FAILED", "", "FAILED")],
)
def test_announce_run_end_alerts_when_the_run_did_not_succeed(outbox, state, error_message, shown):
    delivery = announce_run_end(state, error_message, "ct-14")
    assert delivery is not None and delivery.channel == "outbox"
    assert outbox_lines(outbox)[0]["message"] == run_failed("pipeline", shown, run_name="ct-14")


def test_deployed_shows_versions_and_signed_deltas():
    message = deployed("3", "4", {"accuracy (new data)": 0.1234, "macro-F1 (golden)": -0.004})
    assert message["text"] == "Deployed champion v4 (was v3)"
    assert message["blocks"][1]["text"]["text"] == "*v3* \u2192 *v4*"
    assert message["blocks"][2]["text"]["text"] == "*accuracy (new data)*: +0.123\n*macro-F1 (golden)*: -0.004"


def test_not_deployed_lists_the_reasons_escaped():
    message = not_deployed(["gain 0.004 < min_improvement 0.01", "golden accuracy fell by 0.05 > 0.02 & more"])
    assert message["text"] == ("Challenger not deployed: gain 0.004 &lt; min_improvement 0.01 "
                               "golden accuracy fell by 0.05 &gt; 0.02 &amp; more")
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
