"""The cluster's deploy lock (serving.rollout.deploy_lease) against the fake API server
(tests/kube_fake.py: the API server's storage and resourceVersion checks are simulated; the
kubernetes client and its calls are real). No pods: the Deployment has none."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Iterator

import kubernetes
import pytest
from kube_fake import NAMESPACE, FakeCluster

from serving.rollout import RolloutError, deploy_lease
from serving.state import ServingState

LEASE = "ctloop-deploy-champion"


@pytest.fixture
def api() -> Iterator[kubernetes.client.ApiClient]:
    with FakeCluster(lambda state: None, ServingState(), replicas=0) as fake:
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=fake.url))
        yield client
        client.close()


def test_a_second_holder_waits_until_the_first_lets_go(api) -> None:
    order: list[str] = []
    first_in = threading.Event()

    def hold(holder: str, seconds: float) -> None:
        with deploy_lease(api, NAMESPACE, LEASE, holder, timeout=30):
            order.append(f"{holder} in")
            first_in.set()
            time.sleep(seconds)
            order.append(f"{holder} out")

    first = threading.Thread(target=hold, args=("run-a", 1.5))
    first.start()
    first_in.wait(10)
    hold("run-b", 0)
    first.join()
    assert order == ["run-a in", "run-a out", "run-b in", "run-b out"]
    with pytest.raises(kubernetes.client.exceptions.ApiException) as gone:
        kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(LEASE, NAMESPACE)
    assert gone.value.status == 404  # released


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(api) -> None:
    coordination = kubernetes.client.CoordinationV1Api(api)
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    coordination.create_namespaced_lease(NAMESPACE, kubernetes.client.V1Lease(
        metadata=kubernetes.client.V1ObjectMeta(name=LEASE),
        spec=kubernetes.client.V1LeaseSpec(holder_identity="crashed-run", lease_duration_seconds=60,
                                           renew_time=long_ago)))
    with deploy_lease(api, NAMESPACE, LEASE, "run-c", timeout=5):
        assert coordination.read_namespaced_lease(LEASE, NAMESPACE).spec.holder_identity == "run-c"
        with pytest.raises(RolloutError, match=f"Lease {NAMESPACE}/{LEASE} held by another deploy for more than 1s"):
            with deploy_lease(api, NAMESPACE, LEASE, "run-d", timeout=1):
                pass


def test_a_held_lease_is_renewed_past_its_duration(api) -> None:
    with deploy_lease(api, NAMESPACE, LEASE, "run-e", duration=2, timeout=5):
        time.sleep(3.5)  # beyond the 2 s duration: only the renewals keep it
        with pytest.raises(RolloutError, match="held by another deploy"):
            with deploy_lease(api, NAMESPACE, LEASE, "run-f", duration=2, timeout=1):
                pass
