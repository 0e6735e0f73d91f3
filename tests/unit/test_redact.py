"""Secrets never leave: ctloop.redact, and the places a tracking URI, a TorchServe URL or the Slack
webhook URL could reach a message: Slack's `send` (bad webhook URLs never raise and are never
quoted), the registry's and TorchServe client's errors, and escaped Slack text."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import ctloop.redact
from components.notify.logic import not_deployed
from ctloop.alerts import run_failed
from ctloop.process import free_port
from ctloop.redact import redact_text, redact_url
from ctloop.slack import send
from slack_support import Receiver

SECRET = "s3cr3t-Pa55"  # in every URL below where it must not show


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def secret_hook(receiver: Receiver) -> str:
    """The receiver's webhook URL with a secret path (it answers any path)."""
    return f"http://127.0.0.1:{receiver.server.server_address[1]}/services/T0/B0/{SECRET}"


def test_public_names() -> None:
    assert ctloop.redact.__all__ == ["MASK", "redact_text", "redact_url"]


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://ctloop:{SECRET}@mlflow:5000", "http://***@mlflow:5000"),
    (f"https://user:{SECRET}@mlflow.example/path?x=1", "https://***@mlflow.example/path?x=1"),
    (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    (f"http://user:p@ss:{SECRET}@host/", "http://***@host/"),  # an unencoded @ in the password
    (f"ctloop:{SECRET}@mlflow:5000/api", "***@mlflow:5000/api"),  # no scheme
    (f"https://store.example/m.pt?X-Amz-Signature={SECRET}&X-Amz-Credential={SECRET}&v=2",
     "https://store.example/m.pt?X-Amz-Signature=***&X-Amz-Credential=***&v=2"),
    (f"http://h/p?token={SECRET}&sig={SECRET}&api_key={SECRET}&name=a", "http://h/p?token=***&sig=***&api_key=***&name=a"),
    (f"https://hooks.slack.com/services/T0/B0/{SECRET}", "https://hooks.slack.com/***"),
    (f"hooks.slack.com/services/T0/B0/{SECRET}", "hooks.slack.com/***"),
])
def test_redact_url_masks_credentials_tokens_and_webhook_paths(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "sqlite:////abs/mlflow.db", "sqlite:///rel.db",
                                 "file:/abs/artifacts", "https://mlflow.example/#/models?name=champion", ""])
def test_redact_url_leaves_a_url_without_secrets_as_it_is(url: str) -> None:
    assert redact_url(url) == url


def test_redact_text_masks_every_url_in_a_message() -> None:
    message = (f"API request to http://alice:{SECRET}@127.0.0.1:9/api/2.0/x failed; retry "
               f"'https://b:{SECRET}@h/y?token={SECRET}' or <https://hooks.slack.com/services/T/B/{SECRET}|Slack>")
    assert redact_text(message) == ("API request to http://***@127.0.0.1:9/api/2.0/x failed; retry "
                                    "'https://***@h/y?token=***' or <https://hooks.slack.com/***|Slack>")
    escaped = f"see http://h/p?a=1&amp;token={SECRET}"  # as escaped for Slack
    assert redact_text(escaped) == "see http://h/p?a=1&amp;token=***"


def test_a_secret_url_is_shown_as_its_host_only() -> None:
    hook = f"http://127.0.0.1:8999/services/T0/B0/{SECRET}"
    assert redact_text(f"posting to {hook} failed", [hook]) == "posting to http://127.0.0.1:8999/*** failed"
    assert redact_text(f"unknown url type: 'example.org/{SECRET}'", [f"example.org/{SECRET}"]) == (
        "unknown url type: 'example.org/***'")
    assert redact_text(f"path /services/{SECRET} refused", [f"/services/{SECRET}", ""]) == "path *** refused"


def outbox_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("url", "reason"), [
    (f"hooks.slack.com/services/T0/B0/{SECRET}", "the Slack webhook URL has no scheme"),
    (f"localhost:8080/services/T0/B0/{SECRET}", "the Slack webhook URL has no scheme"),
    (f"ftp://hooks.slack.com/services/T0/B0/{SECRET}", "the Slack webhook URL's scheme is 'ftp', not https"),
    (f"https:///services/T0/B0/{SECRET}", "the Slack webhook URL has no host"),
    (f"https://[::1/services/T0/B0/{SECRET}", "the Slack webhook URL cannot be parsed as a URL"),
    (f"https://hooks.slack.com:99999/services/T0/B0/{SECRET}", "the Slack webhook URL cannot be parsed as a URL"),
    (f"https://hooks.slack.com/services/T0/B0/{SECRET} x",
     "the Slack webhook URL contains whitespace or control characters"),
])
def test_a_bad_webhook_url_sends_to_the_outbox_without_raising_or_quoting_it(
        url: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outbox = tmp_path / "outbox.jsonl"
    message = run_failed("train", f"no webhook at {url}")  # even a message quoting it
    delivery = send(message, url, outbox)
    expected = f"{reason}; expected https://hooks.slack.com/services/..."
    assert (delivery.ok, delivery.channel, delivery.attempts, delivery.reason) == (False, "outbox", 0, expected)
    [entry] = outbox_entries(outbox)
    assert entry["reason"] == expected
    assert entry["message"]["text"].startswith("Run failed in stage train: no webhook at ")
    printed = capsys.readouterr()
    assert printed.out.startswith(f"[notify] outbox {outbox} ({expected}): Run failed in stage train")
    for output in (outbox.read_text(), printed.out, printed.err, caplog.text):
        assert SECRET not in output


def test_a_webhook_url_with_a_trailing_newline_still_posts(receiver: Receiver, tmp_path: Path) -> None:
    """As a Secret made from a file often holds it."""
    delivery = send(not_deployed(["x"]), secret_hook(receiver) + "\n", tmp_path / "outbox.jsonl")
    assert (delivery.ok, delivery.channel) == (True, "slack")
    assert len(receiver.bodies) == 1


def test_slack_failures_never_quote_the_webhook_url(receiver: Receiver, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A 500 (retried: slack_sdk logs each retry with the URL) and a closed port: the reasons,
    the outbox, the console and the log name neither the webhook's path nor credentials."""
    caplog.set_level(logging.DEBUG)
    outbox = tmp_path / "outbox.jsonl"
    receiver.statuses = [500] * 3
    hook = secret_hook(receiver)
    message = run_failed("collect", f"MLflow at http://ctloop:{SECRET}@mlflow:5000 said no; Slack is {hook}")
    failed = send(message, hook, outbox, retries=2, backoff_seconds=0.01)
    closed = send(message, f"http://127.0.0.1:{free_port()}/services/T0/B0/{SECRET}", outbox, retries=0)
    assert (failed.ok, failed.attempts, failed.reason) == (False, 3, "Slack answered 500 'server_error' after 3 attempts")
    assert (closed.ok, closed.attempts) == (False, 1) and closed.reason.startswith("Slack unreachable after 1 attempts (")
    posted = json.dumps(receiver.bodies)
    assert len(receiver.bodies) == 3 and "http://***@mlflow:5000 said no" in posted
    assert f"Slack is http://127.0.0.1:{receiver.server.server_address[1]}/***" in posted
    printed = capsys.readouterr()
    for output in (posted, outbox.read_text(), printed.out, printed.err, caplog.text):
        assert SECRET not in output


def test_user_controlled_text_is_escaped_in_the_fallback_text_too() -> None:
    """Slack reads <!channel> in a message's text as notify-everyone; an error can quote anything."""
    message = run_failed("validate", "class '<!channel>' & file 'a>b.png'\nmore")
    assert message["text"] == "Run failed in stage validate: class '&lt;!channel&gt;' &amp; file 'a&gt;b.png'"
    assert "<!channel>" not in json.dumps(message)
    assert not_deployed(["class <!here> fell"])["text"] == "Challenger not deployed: class &lt;!here&gt; fell"


def test_registry_errors_mask_the_tracking_uri_and_chain_nothing_that_quotes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ctloop import registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = f"http://ctloop:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(registry.RegistryError, match=r"cannot reach the MLflow tracking server at "
                                                     r"http://\*\*\*@127\.0\.0\.1:\d+ to look up alias") as caught:
        registry.get_version_by_alias("m", registry.CHAMPION, down)
    with pytest.raises(registry.RegistryError, match=r"MLflow at htp://\*\*\*@h:5000: cannot open a client") as bad:
        registry.client(f"htp://ctloop:{SECRET}@h:5000")
    for error in (caught.value, bad.value):
        assert SECRET not in "".join(traceback.format_exception(error))


def test_torchserve_errors_mask_credentials_in_its_url() -> None:
    from serving.client import TorchServeClient, TorchServeError

    url = f"http://ts:{SECRET}@127.0.0.1:{free_port()}"
    client = TorchServeClient(url, url, {"management": "m", "inference": "i"}, retries=0)
    with pytest.raises(TorchServeError, match=r"GET http://\*\*\*@127\.0\.0\.1:\d+/models failed") as caught:
        client.models()
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_submit_refuses_a_parameter_that_carries_credentials() -> None:
    """Kubeflow records a run's parameters and the KFP executor logs them: secrets go by env."""
    from kubeflow_pipeline.submit import SubmitError, load_params

    with pytest.raises(SubmitError, match="^pipeline parameters mlflow_tracking_uri carry credentials") as caught:
        load_params(None, [f"mlflow_tracking_uri=http://ctloop:{SECRET}@mlflow:5000"])
    assert SECRET not in str(caught.value)
    assert load_params(None, ["mlflow_tracking_uri=http://mlflow:5000"])["mlflow_tracking_uri"] == "http://mlflow:5000"
