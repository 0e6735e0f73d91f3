"""The locked-down cluster (README, "Locked down"), on the rendered overlays, the install Job and
the pipeline's pod settings: who the NetworkPolicies let through to which port, MLflow's basic
auth, and every container's securityContext.

The policies are read by a small evaluator of Kubernetes' rules (a pod selected by an Ingress
policy accepts only what one of those policies allows; `from` peers are OR-ed, a peer's pod and
namespace selectors AND-ed, a peer without a namespace selector means the policy's namespace). It
knows only what the manifests use, and fails on anything else rather than guess.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest
import yaml

from cicd_support import ROOT
from kubeflow_pipeline import kubernetes as cluster
from test_kustomize import by_kind, render

OVERLAYS = {"k8s/overlays/local": "kubeflow", "k8s/overlays/production": "ctloop"}
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return OVERLAYS[request.param], render(request.param)


@pytest.fixture(scope="module")
def install_job() -> dict:
    [job] = by_kind(render("k8s/jobs/install"), "Job").values()
    return job


@dataclass(frozen=True)
class Peer:
    """A pod that opens a connection: its labels, its namespace and that namespace's labels."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator knows matchLabels only: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def peer_matches(peers: list[dict] | None, peer: Peer, namespace: str) -> bool:
    if not peers:
        return True  # no `from`: every source
    namespace_labels = {"kubernetes.io/metadata.name": peer.namespace, **peer.namespace_labels}
    for entry in peers:
        assert set(entry) <= {"podSelector", "namespaceSelector"}, entry
        in_namespace = (selects(entry["namespaceSelector"], namespace_labels) if "namespaceSelector" in entry
                        else peer.namespace == namespace)
        if in_namespace and selects(entry.get("podSelector", {}), peer.labels):
            return True
    return False


def port_matches(ports: list[dict] | None, port: int, named: dict[str, int]) -> bool:
    if not ports:
        return True
    for entry in ports:
        assert "endPort" not in entry and entry.get("protocol", "TCP") == "TCP", entry
        if named.get(entry["port"], entry["port"]) == port:
            return True
    return False


@dataclass(frozen=True)
class Target:
    """A pod the policies protect: its labels and named container ports, in `namespace`."""

    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]

    @classmethod
    def of(cls, deployment: dict) -> "Target":
        template = deployment["spec"]["template"]
        ports = {port["name"]: port["containerPort"]
                 for container in template["spec"]["containers"] for port in container.get("ports", [])}
        return cls(deployment["metadata"]["namespace"], template["metadata"]["labels"], ports)


def admits(policies: list[dict], target: Target, port: int, peer: Peer) -> bool:
    selecting = [policy for policy in policies if "Ingress" in policy["spec"]["policyTypes"]
                 and selects(policy["spec"]["podSelector"], target.labels)]
    if not selecting:
        return True  # a pod no Ingress policy selects accepts everything
    return any(port_matches(rule.get("ports"), port, target.ports)
               and peer_matches(rule.get("from"), peer, policy["metadata"]["namespace"])
               for policy in selecting for rule in policy["spec"].get("ingress", []))


def policies_of(resources: list[dict]) -> list[dict]:
    return list(by_kind(resources, "NetworkPolicy").values())


def test_the_evaluator_reads_kubernetes_rules() -> None:
    """A peer entry's selectors are AND-ed, entries OR-ed; a pod no policy selects is open."""
    policy = {"metadata": {"namespace": "a"}, "spec": {
        "podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "c"}},
                               "namespaceSelector": {"matchLabels": {"team": "t"}}}],
                     "ports": [{"port": "web"}]}]}}
    target = Target("a", {"app": "x"}, {"web": 80})
    assert admits([policy], target, 80, Peer("b", {"role": "c"}, {"team": "t"}))
    assert not admits([policy], target, 80, Peer("b", {"role": "c"}))  # namespace not labelled
    assert not admits([policy], target, 80, Peer("b", {}, {"team": "t"}))  # pod not labelled
    assert not admits([policy], target, 81, Peer("b", {"role": "c"}, {"team": "t"}))
    assert admits([policy], Target("a", {"app": "y"}, {}), 1, Peer("z"))


def test_ports_map_to_exactly_the_allowed_peers(overlay: tuple[str, list[dict]], install_job: dict) -> None:
    """The issue's table: inference from anywhere in the cluster; management only from the stages
    that hold the management key; metrics only from a namespace labelled for monitoring; MLflow
    only from its clients (the stages that use it, the install Job) and the UI's namespace."""
    namespace, resources = overlay
    policies = policies_of(resources)
    deployments = by_kind(resources, "Deployment")
    torchserve, mlflow = Target.of(deployments["torchserve"]), Target.of(deployments["mlflow"])
    services = by_kind(resources, "Service")
    assert {torchserve.ports[p["targetPort"]] for p in services["torchserve"]["spec"]["ports"]} == {8080, 8081, 8082}
    assert {mlflow.ports[p["targetPort"]] for p in services["mlflow"]["spec"]["ports"]} == {5000}

    def reach(peer: Peer) -> set[int]:
        return ({port for port in (8080, 8081, 8082, 18080, 18081) if admits(policies, torchserve, port, peer)}
                | ({5000} if admits(policies, mlflow, 5000, peer) else set()))

    for stage, needs in cluster.NEEDS.items():
        expected = {8080} | ({8081} if needs.torchserve_keys else set()) | ({5000} if needs.mlflow else set())
        assert reach(Peer(namespace, cluster.pod_labels(needs))) == expected, stage
    assert [s for s, needs in cluster.NEEDS.items() if needs.torchserve_keys] == ["consensus", "deploy"]
    assert [s for s, needs in cluster.NEEDS.items() if needs.mlflow] == ["drift", "collect", "train", "analyze", "deploy"]

    job_labels = install_job["spec"]["template"]["metadata"]["labels"]
    assert reach(Peer(namespace, job_labels)) == {8080, 5000}
    client_labels = {cluster.TORCHSERVE_MANAGEMENT_LABEL: "true", cluster.MLFLOW_CLIENT_LABEL: "true"}
    assert reach(Peer(namespace, {})) == {8080}
    assert reach(Peer("line", {})) == {8080}
    assert reach(Peer("line", client_labels)) == {8080}, "the pod labels count only in ctloop's namespace"
    assert reach(Peer("monitoring", {}, {"ctloop.dev/monitoring": "true"})) == {8080, 8082}
    assert reach(Peer("ingress-nginx", {}, {"ctloop.dev/mlflow-ui": "true"})) == {8080, 5000}
    assert reach(Peer("monitoring", {}, {"kubernetes.io/metadata.name": "monitoring"})) == {8080}, \
        "the namespace's name alone is not enough: it needs the label"


def test_every_ctloop_pod_is_isolated_and_egress_stays_open(overlay: tuple[str, list[dict]], install_job: dict) -> None:
    """The default deny selects every pod the overlays and the install Job create and every
    pipeline stage's pod; no policy restricts egress (README says so)."""
    _, resources = overlay
    policies = policies_of(resources)
    deny = by_kind(resources, "NetworkPolicy")["ctloop-default-deny-ingress"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    pods = {name: workload["spec"]["template"]["metadata"]["labels"]
            for kind in WORKLOADS for name, workload in by_kind(resources, kind).items()}
    pods["ctloop-install"] = install_job["spec"]["template"]["metadata"]["labels"]
    pods |= {f"stage {stage}": cluster.pod_labels(needs) for stage, needs in cluster.NEEDS.items()}
    assert {"torchserve", "mlflow", "ctloop-install", "stage deploy"} <= set(pods)
    for name, labels in pods.items():
        assert selects(deny["podSelector"], labels), name
    assert all(policy["spec"]["policyTypes"] == ["Ingress"] for policy in policies)


def pod_specs(resources: list[dict]) -> dict[str, dict]:
    return {name: workload["spec"]["template"]["spec"]
            for kind in WORKLOADS for name, workload in by_kind(resources, kind).items()}


def writable_paths(pod: dict, container: dict) -> list[PurePosixPath]:
    """Where `container` may write on a read-only root: its mounts of emptyDirs and claims."""
    kinds = {volume["name"]: volume for volume in pod["volumes"]}
    return [PurePosixPath(mount["mountPath"]) for mount in container.get("volumeMounts", [])
            if not mount.get("readOnly") and {"emptyDir", "persistentVolumeClaim"} & set(kinds[mount["name"]])]


@pytest.mark.parametrize("path", [*OVERLAYS, "k8s/overlays/production-monitored", "k8s/jobs/install"])
def test_every_container_runs_locked_down(path: str) -> None:
    """Pod: non-root, seccomp RuntimeDefault, no service account token (none of them calls the
    Kubernetes API). Container: no privilege escalation, no capabilities, a read-only root, /tmp
    and its HOME and log directories on volumes it may write."""
    pods = pod_specs(render(path))
    monitored = {"pushgateway"} if path.endswith("-monitored") else set()
    assert set(pods) == ({"ctloop-install"} if "jobs" in path else {"torchserve", "mlflow"} | monitored)
    for name, pod in pods.items():
        security = pod["securityContext"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("runAsNonRoot", security.get("runAsNonRoot")) is True, where
            assert context.get("runAsUser", security.get("runAsUser")) not in (None, 0), where
            assert "privileged" not in context, where
            writable = writable_paths(pod, container)
            assert PurePosixPath("/tmp") in writable, where
            env = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
            for variable in ("HOME", "LOG_LOCATION", "CTLOOP_STORE_DIR"):
                if env.get(variable):
                    value = PurePosixPath(env[variable])
                    assert any(value == w or w in value.parents for w in writable), (where, variable)


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {entry["name"]: (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
            for entry in container.get("env", []) if "secretKeyRef" in entry.get("valueFrom", {})}


def secret_template(name: str) -> dict:
    templates = [yaml.safe_load(p.read_text()) for p in (ROOT / "k8s" / "secrets").glob("*.yaml")]
    return next(t for t in templates if t["metadata"]["name"] == name)


def test_mlflow_runs_basic_auth_with_the_secrets_credentials(overlay: tuple[str, list[dict]]) -> None:
    """`mlflow server --app-name basic-auth`, its admin and CSRF key from the Secret (required: no
    pod starts without it), its users on the data claim beside the runs, no password in the
    config map; the probes ask /health, which basic auth leaves open."""
    _, resources = overlay
    pod = by_kind(resources, "Deployment")["mlflow"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in container["args"]
    assert container["image"].endswith("-full"), "the plain MLflow image lacks Flask-WTF, which basic auth imports"
    secret = cluster.MLFLOW_AUTH_SECRET
    assert secret_refs(container) == {"MLFLOW_AUTH_ADMIN_USERNAME": (secret, "username"),
                                      "MLFLOW_AUTH_ADMIN_PASSWORD": (secret, "password"),
                                      "MLFLOW_FLASK_SERVER_SECRET_KEY": (secret, "flask-secret-key")}
    assert not any(entry["valueFrom"]["secretKeyRef"].get("optional") for entry in container["env"]
                   if "valueFrom" in entry)
    assert {"username", "password", "flask-secret-key"} <= set(secret_template(secret)["stringData"])

    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    config_path = PurePosixPath(env["MLFLOW_AUTH_CONFIG_PATH"])
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    ini = configparser.ConfigParser()
    ini.read_string(by_kind(resources, "ConfigMap")[volume["configMap"]["name"]]["data"][config_path.name])
    settings = dict(ini["mlflow"])
    assert not {"admin_username", "admin_password"} & set(settings), "credentials only from the Secret"
    assert settings["default_permission"] == "NO_PERMISSIONS"
    data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    assert settings["database_uri"] == f"sqlite:///{data}/basic_auth.db", "users survive a restart"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe


def test_install_job_logs_in_to_mlflow_with_the_secret(install_job: dict) -> None:
    pod = install_job["spec"]["template"]["spec"]
    install = next(c for c in pod["initContainers"] if c["name"] == "install")
    assert secret_refs(install) == {"MLFLOW_TRACKING_USERNAME": (cluster.MLFLOW_AUTH_SECRET, "username"),
                                    "MLFLOW_TRACKING_PASSWORD": (cluster.MLFLOW_AUTH_SECRET, "password")}
    assert install_job["spec"]["template"]["metadata"]["labels"][cluster.MLFLOW_CLIENT_LABEL] == "true"


def test_serving_keys_come_only_from_the_secret(overlay: tuple[str, list[dict]]) -> None:
    """TorchServe's keys survive a restart because there are no keys of its own: both containers
    read them from the Secret, which is required (a pod without it does not start rather than
    fall back to per-start keys), and TorchServe's home, where it would write key_file.json, is
    on the read-only root."""
    _, resources = overlay
    pod = by_kind(resources, "Deployment")["torchserve"]["spec"]["template"]["spec"]
    for container in pod["containers"]:
        refs = [entry["valueFrom"]["secretKeyRef"] for entry in container["env"] if "valueFrom" in entry]
        assert {ref["name"] for ref in refs} == {cluster.TORCHSERVE_SECRET}
        assert not any(ref.get("optional") for ref in refs), container["name"]
        assert PurePosixPath("/home/model-server") not in writable_paths(pod, container), container["name"]


def test_the_pushgateway_admits_the_stages_and_prometheus_only() -> None:
    """k8s/components/monitoring's Pushgateway (9091, no key; pushes and scrapes share the port):
    every stage's pod of ctloop's namespace may push, Prometheus scrapes from a namespace labelled
    for monitoring; TorchServe, MLflow and other namespaces are refused."""
    resources = render("k8s/overlays/production-monitored")
    policies = policies_of(resources)
    deployments = by_kind(resources, "Deployment")
    gateway = Target.of(deployments["pushgateway"])
    service = by_kind(resources, "Service")["pushgateway"]
    assert {gateway.ports[port["targetPort"]] for port in service["spec"]["ports"]} == {9091}
    deny = by_kind(resources, "NetworkPolicy")["ctloop-default-deny-ingress"]["spec"]
    assert selects(deny["podSelector"], gateway.labels)
    for stage, needs in cluster.NEEDS.items():
        assert admits(policies, gateway, 9091, Peer("ctloop", cluster.pod_labels(needs))), stage
    assert admits(policies, gateway, 9091, Peer("monitoring", {}, {"ctloop.dev/monitoring": "true"}))
    for name in ("torchserve", "mlflow"):
        assert not admits(policies, gateway, 9091, Peer("ctloop", Target.of(deployments[name]).labels)), name
    assert not admits(policies, gateway, 9091, Peer("line", cluster.pod_labels(cluster.NEEDS["deploy"])))
    assert not admits(policies, gateway, 9091, Peer("monitoring", {}))
