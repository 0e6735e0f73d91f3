"""The pipeline's own figures through a real Pushgateway on 127.0.0.1, scraped as Prometheus would.

The gateway runs with the Deployment's arguments (k8s/components/monitoring/pushgateway.yaml) but
its address, and without a persistence file (Debian's package defaults to one; the image has
none). It is Debian's `prometheus-pushgateway` (1.5.1; the cluster runs prom/pushgateway
v1.11.1): without the binary the module is skipped saying so, and with
CTLOOP_REQUIRE_PUSHGATEWAY=1 (as .ci/run sets) that is a failure.

The monitor pushes through its kfp wrapper on a real prediction store; the other stages push
their real result objects the way their wrappers do. The scrape is parsed with prometheus_client's
own parser, and every series the dashboard "ctloop pipeline" asks for must be in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cicd_support import ROOT
from ctloop import wire
from ctloop.process import ServerProcess, free_port
from ctloop.pushmetrics import PUSHGATEWAY_ENV, push_figures
from store_support import StoreWriter

BINARY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
REQUIRE = os.environ.get("CTLOOP_REQUIRE_PUSHGATEWAY") == "1"  # read before the autouse fixture clears CTLOOP_*
MONITORING = ROOT / "k8s" / "components" / "monitoring"

pytestmark = pytest.mark.slow


def gateway_args() -> list[str]:
    deployment = next(d for d in yaml.safe_load_all((MONITORING / "pushgateway.yaml").read_text())
                      if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.access(BINARY, os.X_OK):
        message = f"no Pushgateway binary at {BINARY} (apt-get install prometheus-pushgateway)"
        if REQUIRE:
            pytest.fail(f"{message}, and CTLOOP_REQUIRE_PUSHGATEWAY=1 requires one")
        pytest.skip(message)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [f"--web.listen-address=127.0.0.1:{port}" if arg.startswith("--web.listen-address=") else arg
            for arg in gateway_args()]

    def ready() -> bool | str:
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200 or "not ready"
        except requests.ConnectionError:
            return "not listening yet"

    folder = tmp_path_factory.mktemp("pushgateway")
    started = time.monotonic()
    with ServerProcess([BINARY, *args, "--persistence.file="], folder / "pushgateway.log", ready,
                       name=f"Pushgateway at {url}", start_timeout=30, cwd=folder):
        print(f"\n[pushgateway] ready in {time.monotonic() - started:.2f} s")
        yield url


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Series:
    response = requests.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float:
    """The value of the one series `name` with exactly `labels` plus the gateway's job and instance."""
    key = (name, frozenset({"job": "ctloop", "instance": "", **labels}.items()))
    assert key in series, f"{name}{labels} not scraped; ctloop's: {sorted(k for k in series if k[0] == name)}"
    return series[key]


def dashboard_selectors() -> list[tuple[str, dict[str, str]]]:
    """(metric, its label matchers) of every target of the dashboard "ctloop pipeline"."""
    dashboard = json.loads((MONITORING / "pipeline-dashboard.json").read_text())
    selectors = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name, matchers in re.findall(r"\b(ctloop_[a-z_]+|push_time_seconds)(?:\{([^}]*)\})?", target["expr"]):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', matchers))
                assert len(labels) == matchers.count("="), f"only = matchers are checked here: {target['expr']}"
                selectors.append((name, labels))
    return selectors


def push_every_stage(store: Path, tmp_path: Path) -> dict[str, float]:
    """One run's pushes, as the wrappers make them; returns the seconds each push took."""
    from kfp.dsl import Artifact, Dataset, Metrics

    from components.analyze.logic import AnalysisResult, HoldoutEvidence, ModelScores
    from components.consensus.logic import ConsensusReport
    from components.deploy.outcome import DeployOutcome
    from components.drift.logic import DriftResult, decide, decision_metrics
    from components.monitor.component import monitor_op

    seconds = {}
    started = time.monotonic()
    retrain = monitor_op(str(store), 80, 0.7, True, 0.05, 0.6, 0.9, "confidence", "", "test-run",
                         Dataset(uri=str(tmp_path / "window.jsonl")), Artifact(uri=str(tmp_path / "decision.json")),
                         Metrics(uri=str(tmp_path / "metrics.json")))
    seconds["monitor (the whole wrapper)"] = time.monotonic() - started
    assert retrain is True
    monitor = json.loads((tmp_path / "decision.json").read_text())

    slices = {"camera-1": {"count": 40, "distance": 0.001, "p_value": 0.6, "drifted": False},
              "camera-2": {"count": 40, "distance": 0.05, "p_value": 0.002, "drifted": True}}
    drift = DriftResult(True, True, 0.02, 0.004, 0.0033, 80, 60, "drift on camera-2", slices)
    result = decide(monitor, drift, "both")
    report = ConsensusReport(window=80, kept=60, kept_share=0.75, per_class={"0": 30, "1": 30}, agreement=[[30, 2], [3, 30]],
                             disagreed=5, branch_audited_accuracy=0.9, unconfident=15, train_size=48, holdout_size=12,
                             previous_size=0, pseudo_label_precision=0.95, audited_pseudo_labels=20)
    scores = {model: {data: ModelScores(12, accuracy, accuracy, [accuracy, accuracy], [[6, 0], [0, 6]])
                      for data, accuracy in (("holdout", 0.9 if model == "challenger" else 0.7), ("golden", 0.95))}
              for model in ("challenger", "champion")}
    analysis = AnalysisResult(True, ["Pass"], ["0", "1"], scores, 0.02, 0.02, tmp_path / "report.md",
                              HoldoutEvidence([6, 6], 3, 0, 0.125), 5, 0.05)
    outcome = DeployOutcome("2", "1", "1", 1.0, steps=[{"name": "register", "seconds": 1.5, "ok": True, "detail": ""},
                                                       {"name": "set_default", "seconds": 0.25, "ok": True, "detail": ""}])
    pushes = {  # the wrappers' calls (components/<stage>/component.py)
        "drift": lambda: push_figures("drift", {**decision_metrics(result), "retrain": result["retrain"]},
                                      {"model_version": str(result["model_version"])}, result["drift"]["slices"]),
        "consensus": lambda: push_figures("consensus", report.metrics()),
        "analyze": lambda: push_figures("analyze", {**analysis.metrics(), "deploy": analysis.deploy}),
        "deploy": lambda: push_figures("deploy", {**outcome.metrics(), **outcome.summary()}),
        "reconcile": lambda: push_figures("reconcile", {"serving_version": "1"}),
    }
    for stage, push in pushes.items():
        started = time.monotonic()
        assert push() is True, stage
        seconds[stage] = time.monotonic() - started
    return seconds


def test_the_dashboards_series_are_scraped_with_the_pushed_values(gateway: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PUSHGATEWAY_ENV, gateway)
    monkeypatch.setenv("CTLOOP_SLACK_OUTBOX", str(tmp_path / "outbox.jsonl"))
    store = StoreWriter(tmp_path / "store")
    records = [record for camera, sure in (("camera-1", 36), ("camera-2", 12))
               for record in store.log_many([0.95] * sure + [0.5] * (40 - sure), slice_name=camera, atc_threshold=0.6)]
    audited = zip(records[:5], [0, 0, 0, 0, 1])  # all answered 0: 4 of 5 right
    (store.root / wire.FEEDBACK_NAME).write_text(
        "".join(json.dumps({"request_id": record["request_id"], "label": label}) + "\n" for record, label in audited))

    seconds = push_every_stage(store.root, tmp_path)
    print("\n[pushgateway] push seconds: " + ", ".join(f"{stage} {s:.3f}" for stage, s in seconds.items()))
    series = scrape(gateway)

    monitor = {"stage": "monitor", "model_version": "1"}
    assert value(series, "ctloop_yield_value", **monitor) == 0.6  # (36 + 12) of 80 at >= 0.9
    assert value(series, "ctloop_estimated_accuracy", **monitor) == 0.6
    assert value(series, "ctloop_window_size", **monitor) == 80
    assert value(series, "ctloop_retrain", **monitor) == 1
    assert (value(series, "ctloop_audited_accuracy", **monitor), value(series, "ctloop_audited", **monitor)) == (0.8, 5)
    for camera, share in (("camera-1", 0.9), ("camera-2", 0.3)):
        assert value(series, "ctloop_slice_yield", **monitor, slice=camera) == share
        assert value(series, "ctloop_slice_estimated_accuracy", **monitor, slice=camera) == share
    drift = {"stage": "drift", "model_version": "1"}
    assert value(series, "ctloop_drift_p_value", **drift) == 0.004
    assert value(series, "ctloop_drift_distance", **drift) == 0.02
    assert value(series, "ctloop_slice_drift_p_value", **drift, slice="camera-2") == 0.002
    assert (value(series, "ctloop_drifted", **drift), value(series, "ctloop_retrain", **drift)) == (1, 1)
    assert value(series, "ctloop_kept_share", stage="consensus") == 0.75
    assert value(series, "ctloop_pseudo_label_precision", stage="consensus") == 0.95
    assert value(series, "ctloop_audited_pseudo_labels", stage="consensus") == 20
    assert value(series, "ctloop_deploy", stage="analyze") == 1
    assert value(series, "ctloop_challenger_holdout_accuracy", stage="analyze") == 0.9
    assert value(series, "ctloop_deploy_seconds", stage="deploy") == 1.75
    assert value(series, "ctloop_deployed", stage="deploy") == 1
    assert value(series, "ctloop_serving_version", stage="deploy") == 2
    assert value(series, "ctloop_serving_version", stage="reconcile") == 1

    selectors = dashboard_selectors()
    assert len(selectors) >= 15
    for name, labels in selectors:
        assert any(key[0] == name and labels.items() <= dict(key[1]).items() for key in series), \
            f"the dashboard asks for {name}{labels}, which nobody pushed"


def test_a_stages_next_push_replaces_its_figures(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drift run that could not measure (the window still filling) pushes the decision only:
    the previous p-values disappear instead of standing for this run; other stages keep theirs."""
    monkeypatch.setenv(PUSHGATEWAY_ENV, gateway)
    labels = {"model_version": "3"}
    assert push_figures("drift", {"drift_p_value": 0.5, "slice_line-1_drift_p_value": 0.4, "retrain": True}, labels,
                        ["line-1"])
    assert push_figures("consensus", {"kept_share": 0.5})
    assert push_figures("drift", {"retrain": False}, labels)
    series = scrape(gateway)
    names = {name for name, series_labels in series if ("stage", "drift") in series_labels}
    assert names == {"ctloop_retrain", "push_time_seconds", "push_failure_time_seconds"}
    assert value(series, "ctloop_retrain", stage="drift", model_version="3") == 0
    assert value(series, "ctloop_kept_share", stage="consensus") == 0.5


def test_a_gateway_that_never_answers_costs_the_timeout_only(capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway that accepts the connection and never answers: the push gives up after its
    timeout with a warning; nothing is raised."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        assert push_figures("deploy", {"deployed": 1.0}, gateway=url, timeout=0.5) is False
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2, elapsed
    assert f"not pushed to the Pushgateway {url} (timed out)" in capsys.readouterr().out
