"""The compiled pipeline: each stage's image from the registry and tag, and for the cluster the
kfp-kubernetes settings (PVC mounts, Secret and ConfigMap env, pod labels); none of it in a local
compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import compiler

from cicd_support import ROOT
from kubeflow_pipeline import kubernetes as cluster
from kubeflow_pipeline.images import STAGES, ImageSettings
from kubeflow_pipeline.pipeline import build_pipeline

IMAGES = ImageSettings("registry.example/acme", "3f2c1d0")


def compile_docs(tmp_path: Path, cluster_settings: bool) -> list[dict]:
    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(None, IMAGES, cluster=cluster_settings), str(out))
    return list(yaml.safe_load_all(out.read_text()))


@pytest.fixture(scope="module")
def cluster_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return compile_docs(tmp_path_factory.mktemp("cluster"), True)


def executor_of(spec: dict, stage: str) -> list[str]:
    return [name for name, e in spec["deploymentSpec"]["executors"].items()
            if e.get("container", {}).get("image") == IMAGES.image(stage)]


def test_each_stage_runs_in_its_own_image(cluster_docs: list[dict]) -> None:
    spec = cluster_docs[0]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {IMAGES.image(stage) for stage in STAGES}
    for stage in STAGES:
        assert executor_of(spec, stage), stage
    for executor in spec["deploymentSpec"]["executors"].values():
        if "container" in executor:
            assert "pip install" not in " ".join(executor["container"]["command"]), "nothing installed at run time"


def test_cluster_compile_mounts_claims_and_injects_env(cluster_docs: list[dict]) -> None:
    spec, platform = cluster_docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in STAGES:
        needs = cluster.NEEDS[stage]
        for name in executor_of(spec, stage):
            config = executors[name]
            mounts = {(m["constant"], m["mountPath"]) for m in config.get("pvcMount", [])}
            assert ((cluster.STORE_PVC, cluster.STORE_MOUNT) in mounts) == needs.store, name
            assert ((cluster.MODEL_STORE_PVC, cluster.MODEL_STORE_MOUNT) in mounts) == needs.model_store, name
            secrets = {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in config["secretAsEnv"]}
            assert secrets[cluster.SLACK_SECRET] == {"SLACK_WEBHOOK_URL"}, name
            has_keys = secrets.get(cluster.TORCHSERVE_SECRET) == {"CTLOOP_TS_MANAGEMENT_KEY", "CTLOOP_TS_INFERENCE_KEY"}
            assert has_keys == needs.torchserve_keys, name
            maps = {c["configMapName"]: {k["envVar"] for k in c["keyToEnv"]} for c in config.get("configMapAsEnv", [])}
            settings = maps.get(cluster.PIPELINE_CONFIG_MAP, set())
            assert ("MLFLOW_TRACKING_URI" in settings) == needs.mlflow, name
            assert ("CTLOOP_SERVING_DEPLOYMENT" in settings) == needs.serving_fleet, name
            assert "CTLOOP_PUSHGATEWAY_URL" in settings, name  # ctloop.pushmetrics; empty unless monitored


def test_stages_that_use_mlflow_log_in_with_the_secret(cluster_docs: list[dict]) -> None:
    """MLflow runs its basic-auth app: the stages given its URI get the admin's name and password
    from the Secret (required), as MLflow's client reads them; the others get neither."""
    spec, platform = cluster_docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in STAGES:
        for name in executor_of(spec, stage):
            secrets = {s["secretName"]: s for s in executors[name]["secretAsEnv"]}
            credentials = secrets.get(cluster.MLFLOW_AUTH_SECRET)
            assert (credentials is not None) == cluster.NEEDS[stage].mlflow, name
            if credentials is not None:
                assert {(k["secretKey"], k["envVar"]) for k in credentials["keyToEnv"]} == {
                    ("username", "MLFLOW_TRACKING_USERNAME"), ("password", "MLFLOW_TRACKING_PASSWORD")}, name
                assert credentials["optional"] is False, name


def test_every_task_pod_is_labelled_for_the_network_policies(cluster_docs: list[dict]) -> None:
    """The labels k8s/base/network-policies.yaml selects (tests/unit/test_locked_down.py follows
    them through the policies)."""
    spec, platform = cluster_docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in STAGES:
        for name in executor_of(spec, stage):
            assert executors[name]["podMetadata"]["labels"] == cluster.pod_labels(cluster.NEEDS[stage]), name
    labelled = {s for s in STAGES if cluster.MLFLOW_CLIENT_LABEL in cluster.pod_labels(cluster.NEEDS[s])}
    assert labelled == {"drift", "collect", "train", "analyze", "deploy"}


def test_tasks_run_as_the_images_non_root_user_without_a_security_context(cluster_docs: list[dict]) -> None:
    """KFP 2.14 and 2.15 refuse a task's securityContext setting (their API server parses the
    Kubernetes settings strictly), so the compiled pipeline carries none; the stage images' own
    numeric non-root user is what runs, and what KFP 2.16's runAsNonRoot default can verify."""
    _, platform = cluster_docs
    for name, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert "securityContext" not in config, name
    users = [line.split()[1] for line in (ROOT / "components" / "Dockerfile").read_text().splitlines()
             if line.startswith("USER ")]
    assert users == ["10001:1000"], "numeric, so the kubelet can check runAsNonRoot"


def test_every_task_pulls_with_the_image_pull_secret(cluster_docs: list[dict]) -> None:
    spec, platform = cluster_docs
    containers = {name for name, e in spec["deploymentSpec"]["executors"].items() if "container" in e}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert containers <= set(executors), "every container task has a platform config"
    for name in containers:
        assert pull_secrets(executors[name]) == [cluster.IMAGE_PULL_SECRET], name


def pull_secrets(config: dict) -> list[str]:
    """The pull secrets' names, as constants (kfp-kubernetes writes both fields)."""
    names = []
    for secret in config.get("imagePullSecret", []):
        assert secret["secretNameParameter"] == {"runtimeValue": {"constant": secret["secretName"]}}
        names.append(secret["secretName"])
    return names


@pytest.mark.parametrize(("value", "expected"), [("acme-ghcr", ["acme-ghcr"]), ("", [])])
def test_pull_secret_is_set_by_the_environment(tmp_path: Path, monkeypatch, value: str, expected) -> None:
    monkeypatch.setenv(cluster.IMAGE_PULL_SECRET_ENV, value)
    spec, platform = compile_docs(tmp_path, True)
    for name, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert pull_secrets(config) == expected, name


def test_monitor_collect_and_deploy_share_the_store(cluster_docs: list[dict]) -> None:
    assert [s for s in STAGES if cluster.NEEDS[s].store] == ["monitor", "drift", "collect", "deploy"]
    assert [s for s in STAGES if cluster.NEEDS[s].torchserve_keys] == ["consensus", "deploy"]


def test_local_compile_has_no_kubernetes_settings(tmp_path: Path) -> None:
    docs = compile_docs(tmp_path, False)
    assert len(docs) == 1, "a local compile carries no platform spec"
    assert docs[0]["deploymentSpec"] == compile_docs(tmp_path, True)[0]["deploymentSpec"]
