"""The deploy stage on a cluster (components.deploy.cluster, serving.rollout) against a fake
Kubernetes API server whose pods are real serving containers.

Simulated (tests/kube_fake.py): the API server, the Deployment's rolling update and the
EndpointSlices. Real: each pod's two containers (TorchServe behind its proxy, with the Secret's
fixed keys) started from the ConfigMap's desired state on the shared model store, MLflow's
registry (SQLite), and the kubernetes client making the calls. One difference from the cluster's
pods: they load the champion of that state only. B1 and B2 take no part in a rollout, and each
would add a worker (a torch import) to each of the eight pods the module starts; the ConfigMap
still declares them, and the tests check that a deploy keeps them there.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import kubernetes
import numpy as np
import pytest
from deploy_support import aliases, new_challenger
from kube_fake import NAMESPACE, FakeCluster
from pipeline_support import declare, new_registry

from components.deploy.cluster import deploy_on_cluster
from components.deploy.logic import DeployFailedError
from ctloop import registry
from ctloop.canary import Canary
from ctloop_app.container_run import shared_dir, start_serving
from ctloop_app.install import BRANCH_VERSION, REGISTERED_MODEL
from image_support import IMAGES, TEST_JAVA_OPTIONS
from serving.archive import build_archive
from serving.client import TorchServeClient
from serving.rollout import ServingDeployment
from serving.state import ServingState, read_state, write_state

pytestmark = [pytest.mark.containers, pytest.mark.slow]

KEYS = {"management": "m" * 40, "inference": "i" * 40}


@dataclass
class Cluster:
    fake: FakeCluster
    fleet: ServingDeployment
    model_store: Path
    tracking_uri: str

    def champion(self) -> str:
        """The version the registry's alias names and every pod serves: where a test starts."""
        version = aliases(self.tracking_uri)["champion"]
        assert version is not None and self.served() == [(version, version)] * len(self.fake.pods)
        return version

    def served(self) -> list[tuple[str, str]]:
        """(default champion version, version answering) of every pod, asked directly."""
        answers = []
        for pod in self.fake.pods:
            client = TorchServeClient(pod.inference_url, pod.management_url, KEYS)
            try:
                image = np.zeros((1, 8, 8), dtype=np.float32)
                answers.append((client.default_version("champion"),
                                client.predict("champion", image, canary=True).model_version))
            finally:
                client.close()
        return answers


@pytest.fixture(scope="module")
def cluster(engine, built, boot, mlflow_schema: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Champion v1 in MLflow; champion v1, B1 and B2 in the model store and its desired state; two
    pods serving the champion behind the fake API server. One cluster for the module: a pod starts
    in about 4 CPU-seconds, so each test starts from whatever champion the tests before it left
    serving (Cluster.champion) rather than from two new pods."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    model_store, store = shared_dir(tmp_path / "model-store"), shared_dir(tmp_path / "store")
    tracking_uri = new_registry(tmp_path / "mlflow", mlflow_schema)
    version = registry.register_model_file(REGISTERED_MODEL, boot.model_files["champion"], boot.train_set,
                                           tracking_uri=tracking_uri)
    registry.promote(REGISTERED_MODEL, version, tracking_uri)
    for role in ("champion", "b1", "b2"):
        build_archive(boot.model_files[role], role, version if role == "champion" else BRANCH_VERSION, model_store)
    declare(model_store, {"champion": version, "b1": BRANCH_VERSION, "b2": BRANCH_VERSION})
    numbers = itertools.count()

    def start_pod(state: ServingState):
        mounted = shared_dir(tmp_path / f"pod-{next(numbers)}")  # the ConfigMap, as the pod mounts it
        write_state(mounted, ServingState({"champion": state.model("champion")}))
        return start_serving(engine, IMAGES.image("serving"), model_store, store, models=("champion",),
                             keys=KEYS, state_dir=mounted, java_options=TEST_JAVA_OPTIONS)

    with FakeCluster(start_pod, read_state(model_store)) as fake:
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=fake.url))
        with contextlib.closing(api):
            yield Cluster(fake, ServingDeployment(api, NAMESPACE), model_store, tracking_uri)


def test_a_deploy_rolls_every_replica_and_asks_each_pod(cluster: Cluster, boot, tmp_path: Path) -> None:
    old, rollouts = cluster.champion(), cluster.fake.rollouts
    model, version, canary = new_challenger(tmp_path / "next", cluster.tracking_uri, 51, boot.golden_set,
                                            train_set=boot.train_set)

    outcome = deploy_on_cluster(model, version, canary, cluster.model_store, cluster.fleet, KEYS,
                                REGISTERED_MODEL, cluster.tracking_uri, replaces=old)

    assert (outcome.status, outcome.old_version, outcome.repairs) == ("deployed", old, [])
    assert [step["name"] for step in outcome.steps] == ["roll_out", "smoke_test_pods"]
    assert cluster.fake.rollouts == rollouts + 1 and len(cluster.fake.pods) == 2
    assert cluster.served() == [(version, version)] * 2
    assert aliases(cluster.tracking_uri) == {"champion": version, "previous-champion": old}
    configured = cluster.fake.configured_state()
    assert (configured.model("champion").default, sorted(configured.models)) == (version, ["b1", "b2", "champion"])


def test_a_pod_answering_wrong_rolls_every_replica_back(cluster: Cluster, boot, tmp_path: Path) -> None:
    old, rollouts = cluster.champion(), cluster.fake.rollouts
    configured = list(cluster.fake.configured_state().model("champion").versions)
    model, version, canary = new_challenger(tmp_path / "next", cluster.tracking_uri, 52, boot.golden_set,
                                            train_set=boot.train_set)
    right = Canary.load(canary)
    wrong = tmp_path / "wrong.npz"
    Canary(right.images, right.labels, np.roll(right.probabilities, 1, axis=1)).save(wrong)

    with pytest.raises(DeployFailedError, match=f"champion version {version} rolled back on every replica: pod "):
        deploy_on_cluster(model, version, wrong, cluster.model_store, cluster.fleet, KEYS, REGISTERED_MODEL,
                          cluster.tracking_uri, replaces=old)

    assert cluster.fake.rollouts == rollouts + 2  # out, then back
    assert cluster.served() == [(old, old)] * 2
    assert list(cluster.fake.configured_state().model("champion").versions) == configured
    assert not (cluster.model_store / f"champion-v{version}.mar").exists()
    assert aliases(cluster.tracking_uri)["champion"] == old
