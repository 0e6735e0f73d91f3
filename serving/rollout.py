"""The serving fleet on Kubernetes: the desired state in a ConfigMap, rolled out to every replica.

TorchServe's management API reaches one pod behind a Service (pytorch/serve#1430), so on a
cluster a deploy does not register versions through it. It writes the desired state
(serving.state) into the ConfigMap every TorchServe pod starts from, then rolls the Deployment:
a pod-template annotation carrying the state's sha256 makes the rollout controller replace the
pods one by one (RollingUpdate, maxUnavailable 0), each new pod serving exactly that state. The
deploy waits for the rollout (observedGeneration, updated and available replicas, no old pod
left) and can then smoke-test every pod directly, from the Service's EndpointSlices.

`deploy_lease` is the cluster's serving lock: a coordination.k8s.io Lease taken by create, or by
a compare-and-set replace of an expired one (resourceVersion), and renewed while held, so two
runs never deploy at once and a run that died blocks the next for at most the Lease's duration.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from serving.state import STATE_FILE, ServingState

__all__ = ["RolloutError", "ServingDeployment", "deploy_lease"]

STATE_ANNOTATION = "ctloop.dev/serving-state-sha256"


class RolloutError(RuntimeError):
    """The rollout did not finish in time, or the cluster refused a call; the message says which."""


@dataclass(frozen=True)
class ServingDeployment:
    """The TorchServe Deployment, its Service and the ConfigMap of its desired state."""

    api: k8s.ApiClient
    namespace: str
    deployment: str = "torchserve"
    service: str = "torchserve"
    config_map: str = "ctloop-serving-state"

    def read_state(self) -> ServingState | None:
        try:
            found = k8s.CoreV1Api(self.api).read_namespaced_config_map(self.config_map, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise RolloutError(f"cannot read ConfigMap {self.namespace}/{self.config_map}: {error.reason}") from error
        text = (found.data or {}).get(STATE_FILE)
        return ServingState.from_json(text, f"ConfigMap {self.config_map}") if text else None

    def write_state(self, state: ServingState) -> None:
        body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=self.config_map), data={STATE_FILE: state.to_json()})
        core = k8s.CoreV1Api(self.api)
        try:
            core.replace_namespaced_config_map(self.config_map, self.namespace, body)
        except ApiException as error:
            if error.status != 404:
                raise RolloutError(f"cannot write ConfigMap {self.namespace}/{self.config_map}: {error.reason}") from error
            core.create_namespaced_config_map(self.namespace, body)

    def roll(self, state: ServingState, timeout: float = 900.0) -> None:
        """Make every replica serve `state`: mark the pod template with its digest, wait for the rollout."""
        digest = hashlib.sha256(state.to_json().encode()).hexdigest()
        patch = {"spec": {"template": {"metadata": {"annotations": {STATE_ANNOTATION: digest}}}}}
        try:
            k8s.AppsV1Api(self.api).patch_namespaced_deployment(self.deployment, self.namespace, patch)
        except ApiException as error:
            raise RolloutError(f"cannot patch Deployment {self.namespace}/{self.deployment}: {error.reason}") from error
        self.wait_rolled_out(timeout)

    def wait_rolled_out(self, timeout: float) -> None:
        """Until the controller saw the newest template and every replica runs it, none of the old."""
        deadline = time.monotonic() + timeout
        while True:
            found = k8s.AppsV1Api(self.api).read_namespaced_deployment(self.deployment, self.namespace)
            status, wanted = found.status, found.spec.replicas
            if ((status.observed_generation or 0) >= found.metadata.generation
                    and (status.updated_replicas or 0) == wanted and (status.available_replicas or 0) == wanted
                    and (status.replicas or 0) == wanted):
                return
            if time.monotonic() > deadline:
                raise RolloutError(f"Deployment {self.deployment} not rolled out after {timeout:.0f}s: "
                                   f"{status.updated_replicas or 0} of {wanted} updated, "
                                   f"{status.available_replicas or 0} available, {status.replicas or 0} in all")
            time.sleep(0.5)

    def pod_urls(self, port_name: str = "inference") -> list[str]:
        """Every ready pod's URL for `port_name`, from the Service's EndpointSlices."""
        slices = k8s.DiscoveryV1Api(self.api).list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}").items
        urls = []
        for endpoint_slice in slices:
            ports = [port.port for port in endpoint_slice.ports or [] if port.name == port_name]
            for endpoint in endpoint_slice.endpoints or []:
                if ports and (endpoint.conditions is None or endpoint.conditions.ready is not False):
                    urls += [f"http://{address}:{ports[0]}" for address in endpoint.addresses]
        return sorted(urls)


@contextlib.contextmanager
def deploy_lease(api: k8s.ApiClient, namespace: str, name: str, holder: str, duration: int = 120,
                 timeout: float = 900.0) -> Iterator[None]:
    """Hold the Lease `name` while the block runs, renewing it every third of `duration` seconds
    (so a run that died lets go within `duration`, a long rollout never does); wait up to
    `timeout` while another holder's Lease is live. Released by deleting it if it is still ours."""
    coordination = k8s.CoordinationV1Api(api)
    deadline = time.monotonic() + timeout
    while not _take(coordination, namespace, name, holder, duration):
        if time.monotonic() > deadline:
            raise RolloutError(f"Lease {namespace}/{name} held by another deploy for more than {timeout:.0f}s")
        time.sleep(1.0)
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(coordination, namespace, name, holder, duration, done),
                               daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        with contextlib.suppress(ApiException):
            lease = coordination.read_namespaced_lease(name, namespace)
            if lease.spec.holder_identity == holder:
                coordination.delete_namespaced_lease(name, namespace, body=k8s.V1DeleteOptions(
                    preconditions=k8s.V1Preconditions(resource_version=lease.metadata.resource_version)))


def _renew(coordination: k8s.CoordinationV1Api, namespace: str, name: str, holder: str, duration: int,
           done: threading.Event) -> None:
    """Move the Lease's renewTime forward until `done`; stop if it is no longer ours."""
    while not done.wait(duration / 3):
        try:
            lease = coordination.read_namespaced_lease(name, namespace)
            if lease.spec.holder_identity != holder:
                return
            lease.spec.renew_time = datetime.datetime.now(datetime.timezone.utc)
            coordination.replace_namespaced_lease(name, namespace, lease)
        except ApiException:
            continue  # the API server is briefly away or another writer won: try again next time


def _take(coordination: k8s.CoordinationV1Api, namespace: str, name: str, holder: str, duration: int) -> bool:
    """Create the Lease, or replace it if it expired (the resourceVersion makes that a compare-and-set)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    spec = k8s.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=duration, acquire_time=now, renew_time=now)
    try:
        coordination.create_namespaced_lease(namespace, k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=spec))
        return True
    except ApiException as error:
        if error.status != 409:
            raise RolloutError(f"cannot create Lease {namespace}/{name}: {error.reason}") from error
    lease = coordination.read_namespaced_lease(name, namespace)
    renewed = lease.spec.renew_time or lease.spec.acquire_time
    if renewed is not None and renewed + datetime.timedelta(seconds=lease.spec.lease_duration_seconds or 0) > now:
        return False
    lease.spec = spec
    try:
        coordination.replace_namespaced_lease(name, namespace, lease)
    except ApiException as error:
        if error.status == 409:  # another run took it first
            return False
        raise RolloutError(f"cannot take Lease {namespace}/{name}: {error.reason}") from error
    return True
