"""What a stage needs from the cluster: PVC mounts, Secret/ConfigMap env, the image pull secret
and the pod labels the NetworkPolicies select (kfp-kubernetes).

Applied only when compiling for a cluster (`build_pipeline(..., cluster=True)`); local runs never
see these settings. The names match the manifests under `k8s/base/`; a test renders them and
checks that every claim, Secret and ConfigMap named here exists there, and that the labels let
each stage through to what it calls.

No securityContext is set here. kfp-kubernetes 2.17's `set_security_context` (runAsUser,
runAsGroup, runAsNonRoot) would make every run fail on KFP 2.14 and 2.15, the backend the README
installs: their API server parses a task's Kubernetes settings strictly and refuses a field it
does not know. The stage images run as UID 10001, GID 1000 (components/Dockerfile); KFP 2.16 and
newer give every task's container no privilege escalation, no capabilities and seccomp
RuntimeDefault, and runAsNonRoot where the admin sets defaultSecurityContextRunAsNonRoot in KFP's
pipeline-install-config. readOnlyRootFilesystem cannot be set at all: the KFP launcher writes
into the image (/gcs, /minio, /s3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from kfp import dsl
from kfp import kubernetes as k8s

STORE_PVC = "ctloop-store"
MODEL_STORE_PVC = "ctloop-model-store"
STORE_MOUNT = "/mnt/ctloop/store"
MODEL_STORE_MOUNT = "/mnt/ctloop/model-store"
TORCHSERVE_SECRET = "ctloop-torchserve-token"
SLACK_SECRET = "ctloop-slack"
# MLflow's basic auth (k8s/secrets/mlflow-auth.yaml): the stages log in as its admin, with the
# variables MLflow's client sends as HTTP basic auth.
MLFLOW_AUTH_SECRET = "ctloop-mlflow-auth"
MLFLOW_CREDENTIALS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
PIPELINE_CONFIG_MAP = "ctloop-pipeline-env"
# The docker-registry Secret the stage images (private GHCR packages) are pulled with; the
# TorchServe Deployment names the same one (k8s/base/torchserve/deployment.yaml).
IMAGE_PULL_SECRET = "ctloop-registry"
IMAGE_PULL_SECRET_ENV = "CTLOOP_IMAGE_PULL_SECRET"
# Pod labels k8s/base/network-policies.yaml selects: every ctloop pod falls under the default deny;
# a stage with the management key may reach TorchServe's 8081, one that uses MLflow its 5000.
PART_OF_LABEL = "app.kubernetes.io/part-of"
TORCHSERVE_MANAGEMENT_LABEL = "ctloop.dev/torchserve-management"
MLFLOW_CLIENT_LABEL = "ctloop.dev/mlflow-client"
# Every stage's pod may push its figures to the Pushgateway of k8s/components/monitoring, whose
# NetworkPolicy admits this label; the URL comes from the ConfigMap (empty: no push).
METRICS_PUSH_LABEL = "ctloop.dev/metrics-push"


def image_pull_secret() -> str:
    """The pull secret's name: CTLOOP_IMAGE_PULL_SECRET when set (empty: none), else ctloop-registry.
    Kubernetes pulls without it (and says so in the pod's events) when the Secret does not exist."""
    return os.environ.get(IMAGE_PULL_SECRET_ENV, IMAGE_PULL_SECRET).strip()


@dataclass(frozen=True)
class StageNeeds:
    """The cluster resources one stage uses."""

    store: bool = False
    model_store: bool = False
    torchserve_keys: bool = False
    mlflow: bool = False
    serving_fleet: bool = False  # rolls the TorchServe Deployment (components.deploy.cluster)


NEEDS: dict[str, StageNeeds] = {
    "monitor": StageNeeds(store=True),
    "drift": StageNeeds(store=True, mlflow=True),
    "collect": StageNeeds(store=True, mlflow=True),
    "validate": StageNeeds(),
    "consensus": StageNeeds(torchserve_keys=True),
    "train": StageNeeds(mlflow=True),
    "analyze": StageNeeds(mlflow=True),
    "deploy": StageNeeds(store=True, model_store=True, torchserve_keys=True, mlflow=True, serving_fleet=True),
    "notify": StageNeeds(),
}


def pod_labels(needs: StageNeeds) -> dict[str, str]:
    """The labels a stage's pod carries for the NetworkPolicies."""
    labels = {PART_OF_LABEL: "ctloop", METRICS_PUSH_LABEL: "true"}
    if needs.torchserve_keys:
        labels[TORCHSERVE_MANAGEMENT_LABEL] = "true"
    if needs.mlflow:
        labels[MLFLOW_CLIENT_LABEL] = "true"
    return labels


def apply_cluster_settings(task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
    """Mount the PVCs and inject the env `stage` needs and label its pod for the NetworkPolicies;
    every stage gets the Slack webhook, the image pull secret and the Pushgateway's URL."""
    needs = NEEDS[stage]
    for key, value in pod_labels(needs).items():
        k8s.add_pod_label(task, key, value)
    pull_secret = image_pull_secret()
    if pull_secret:
        k8s.set_image_pull_secrets(task, [pull_secret])
    if needs.store:
        k8s.mount_pvc(task, pvc_name=STORE_PVC, mount_path=STORE_MOUNT)
    if needs.model_store:
        k8s.mount_pvc(task, pvc_name=MODEL_STORE_PVC, mount_path=MODEL_STORE_MOUNT)
    if needs.torchserve_keys:
        k8s.use_secret_as_env(task, TORCHSERVE_SECRET, {
            "management-key": "CTLOOP_TS_MANAGEMENT_KEY",
            "inference-key": "CTLOOP_TS_INFERENCE_KEY",
        })
    settings = {**({"mlflow-tracking-uri": "MLFLOW_TRACKING_URI"} if needs.mlflow else {}),
                **({"serving-deployment": "CTLOOP_SERVING_DEPLOYMENT"} if needs.serving_fleet else {}),
                "pushgateway-url": "CTLOOP_PUSHGATEWAY_URL"}
    # one call per ConfigMap: a second one for the same map replaces the first
    k8s.use_config_map_as_env(task, PIPELINE_CONFIG_MAP, settings)
    if needs.mlflow:
        k8s.use_secret_as_env(task, MLFLOW_AUTH_SECRET, MLFLOW_CREDENTIALS)
    # Optional: without a webhook the messages go to the stage's outbox (CTLOOP_SLACK_OUTBOX) and log.
    k8s.use_secret_as_env(task, SLACK_SECRET, {"webhook-url": "SLACK_WEBHOOK_URL"}, optional=True)
    return task


def for_cluster(op: Callable[..., dsl.PipelineTask], stage: str) -> Callable[..., dsl.PipelineTask]:
    """`op`, whose tasks get `stage`'s cluster settings when the pipeline is built."""

    def make_task(*args, **kwargs) -> dsl.PipelineTask:
        return apply_cluster_settings(op(*args, **kwargs), stage)

    return make_task
