"""What a stage needs from the cluster: PVC mounts, Secret/ConfigMap env and the image pull
secret (kfp-kubernetes).

Applied only when compiling for a cluster (`build_pipeline(..., cluster=True)`); local runs never
see these settings. The names match the manifests under `k8s/base/`; a test renders them and
checks that every claim, Secret and ConfigMap named here exists there.
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
PIPELINE_CONFIG_MAP = "ctloop-pipeline-env"
# The docker-registry Secret the stage images (private GHCR packages) are pulled with; the
# TorchServe Deployment names the same one (k8s/base/torchserve/deployment.yaml).
IMAGE_PULL_SECRET = "ctloop-registry"
IMAGE_PULL_SECRET_ENV = "CTLOOP_IMAGE_PULL_SECRET"


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
    "collect": StageNeeds(store=True, mlflow=True),
    "validate": StageNeeds(),
    "consensus": StageNeeds(torchserve_keys=True),
    "train": StageNeeds(mlflow=True),
    "analyze": StageNeeds(mlflow=True),
    "deploy": StageNeeds(store=True, model_store=True, torchserve_keys=True, mlflow=True, serving_fleet=True),
    "notify": StageNeeds(),
}


def apply_cluster_settings(task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
    """Mount the PVCs and inject the env `stage` needs; every stage gets the Slack webhook and
    the image pull secret."""
    needs = NEEDS[stage]
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
                **({"serving-deployment": "CTLOOP_SERVING_DEPLOYMENT"} if needs.serving_fleet else {})}
    if settings:  # one call per ConfigMap: a second one for the same map replaces the first
        k8s.use_config_map_as_env(task, PIPELINE_CONFIG_MAP, settings)
    # Optional: without a webhook the messages go to the stage's outbox (CTLOOP_SLACK_OUTBOX) and log.
    k8s.use_secret_as_env(task, SLACK_SECRET, {"webhook-url": "SLACK_WEBHOOK_URL"}, optional=True)
    return task


def for_cluster(op: Callable[..., dsl.PipelineTask], stage: str) -> Callable[..., dsl.PipelineTask]:
    """`op`, whose tasks get `stage`'s cluster settings when the pipeline is built."""

    def make_task(*args, **kwargs) -> dsl.PipelineTask:
        return apply_cluster_settings(op(*args, **kwargs), stage)

    return make_task
