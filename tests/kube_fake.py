"""A local stand-in for the Kubernetes API server, for serving.rollout (no cluster runs here).

Simulated: the API server (objects in memory, resourceVersion checks, only the routes
serving.rollout calls), the Deployment controller's RollingUpdate (maxSurge 1, maxUnavailable 0:
a new pod, once ready, replaces an old one, one at a time) and the EndpointSlice controller (one
slice per ready pod). Real: every pod, a serving container pair (TorchServe and its proxy, as
the Deployment runs them) started from the ConfigMap's desired state on the shared model store,
reached on its own published port.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Protocol

from serving.state import STATE_FILE, ServingState

NAMESPACE = "ctloop"
ROUTE = re.compile(r"^/(?:api/v1|apis/(?P<group>[a-z0-9.]+)/v1)/namespaces/(?P<ns>[^/]+)/(?P<kind>[a-z]+)(?:/(?P<name>[^/?]+))?")
KINDS = {"configmaps": ("v1", "ConfigMap"), "deployments": ("apps/v1", "Deployment"),
         "leases": ("coordination.k8s.io/v1", "Lease"), "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice")}


class Pod(Protocol):
    inference_url: str

    def stop(self) -> None: ...


@dataclass
class FakeCluster:
    """The API server on 127.0.0.1 (`url`), with the torchserve Deployment of `replicas` pods
    that `start_pod(state)` starts; the ConfigMap of the desired state starts as `state`."""

    start_pod: Callable[[ServingState], Pod]
    state: ServingState
    replicas: int = 2
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    rollouts: int = 0
    _versions: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __enter__(self) -> "FakeCluster":
        self._store("configmaps", {"metadata": {"name": "ctloop-serving-state"}, "data": {STATE_FILE: self.state.to_json()}})
        template = {"metadata": {"annotations": {}}, "spec": {"containers": [{"name": "torchserve"}, {"name": "proxy"}]}}
        self._store("deployments", {"metadata": {"name": "torchserve", "generation": 1},
                                    "spec": {"replicas": self.replicas, "template": template,
                                             "selector": {"matchLabels": {"app.kubernetes.io/name": "torchserve"}}},
                                    "status": {}})
        self.pods = [self.start_pod(self.state) for _ in range(self.replicas)]
        self._status(updated=self.replicas, total=self.replicas, observed=1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        if getattr(self, "rollout", None) is not None:
            self.rollout.join(timeout=600)
        for pod in self.pods:
            pod.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def configured_state(self) -> ServingState:
        return ServingState.from_json(self.objects[("configmaps", "ctloop-serving-state")]["data"][STATE_FILE])

    # --- storage -----------------------------------------------------------------------------
    def _store(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        api_version, kind_name = KINDS[kind]
        body = {**body, "apiVersion": api_version, "kind": kind_name}
        body["metadata"] = {**body.get("metadata", {}), "namespace": NAMESPACE,
                            "resourceVersion": str(next(self._versions))}
        self.objects[(kind, body["metadata"]["name"])] = body
        return body

    def _status(self, updated: int, total: int, observed: int | None = None) -> None:
        deployment = self.objects[("deployments", "torchserve")]
        status = deployment["status"]
        status.update(updatedReplicas=updated, replicas=total, availableReplicas=total, readyReplicas=total)
        if observed is not None:
            status["observedGeneration"] = observed

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        match = ROUTE.match(path)
        if match is None or match["kind"] not in KINDS:
            return 404, _status(404, "NotFound", f"no route {path}")
        kind, name = match["kind"], match["name"]
        with self._lock:
            if kind == "endpointslices":
                return 200, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
                             "items": [_endpoint_slice(index, pod) for index, pod in enumerate(self.pods)]}
            found = self.objects.get((kind, name)) if name else None
            if method == "GET":
                return (200, found) if found else (404, _status(404, "NotFound", f"{kind} {name} not found"))
            if method == "POST":
                if (kind, body["metadata"]["name"]) in self.objects:
                    return 409, _status(409, "AlreadyExists", f"{kind} {body['metadata']['name']} already exists")
                return 201, self._store(kind, body)
            if found is None:
                return 404, _status(404, "NotFound", f"{kind} {name} not found")
            if method == "PUT":
                wanted = body["metadata"].get("resourceVersion")
                if wanted and wanted != found["metadata"]["resourceVersion"]:
                    return 409, _status(409, "Conflict", f"{kind} {name} was modified")
                return 200, self._store(kind, body)
            if method == "DELETE":
                del self.objects[(kind, name)]
                return 200, _status(200, "Success", "deleted")
            if method == "PATCH" and kind == "deployments":
                return 200, self._patch_deployment(found, body)
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    # --- the rollout controller --------------------------------------------------------------
    def _patch_deployment(self, deployment: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        annotations = patch["spec"]["template"]["metadata"]["annotations"]
        template = deployment["spec"]["template"]["metadata"]["annotations"]
        if any(template.get(key) != value for key, value in annotations.items()):
            template.update(annotations)
            deployment["metadata"]["generation"] += 1
            self.rollouts += 1
            self.rollout = threading.Thread(target=self._roll, args=(deployment["metadata"]["generation"],),
                                            daemon=True)
            self.rollout.start()
        return deployment

    def _roll(self, generation: int) -> None:
        """RollingUpdate, maxSurge 1, maxUnavailable 0: start a new pod from the ConfigMap, once
        it is ready take one old pod out of the endpoints and stop it; then the next."""
        state = self.configured_state()
        old, new = list(self.pods), []
        self._status(updated=0, total=len(old))
        for _ in range(self.replicas):
            try:
                pod = self.start_pod(state)
            except Exception:  # a pod that never gets ready: the rollout stalls, as on a cluster
                return
            with self._lock:
                new.append(pod)
                retired = old.pop(0)
                self.pods = [*old, *new]
                self._status(updated=len(new), total=len(old) + len(new))
            retired.stop()
        with self._lock:
            self._status(updated=len(new), total=len(new), observed=generation)


def _endpoint_slice(index: int, pod: Pod) -> dict[str, Any]:
    host, port = pod.inference_url.removeprefix("http://").split(":")
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"torchserve-{index}", "labels": {"kubernetes.io/service-name": "torchserve"}},
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": "inference", "port": int(port), "protocol": "TCP"}]}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure" if code >= 400 else "Success",
            "reason": reason, "message": message, "code": code}


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, answer = cluster.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler
