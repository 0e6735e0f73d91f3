"""MLflow as the cluster starts it, on 127.0.0.1: the Deployment's own `mlflow server` arguments
(k8s/base/mlflow/mlflow.yaml, `--app-name=basic-auth`, two workers) and its basic_auth.ini, with
the data claim as a folder and the ctloop-mlflow-auth Secret's values in the variables the
Deployment maps them to. ctloop's registry logs in as the pipeline's stages do, with the variables
kubeflow_pipeline/kubernetes.py gives them.

Differences from the pod: the host and port, the folder, one more allowed host, and MLflow's job
runner off (as ctloop_app/mlflow_server.py has it: it is not the registry, and it slows the start).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from cicd_support import ROOT
from ctloop import registry
from ctloop.process import ServerProcess, free_port
from kubeflow_pipeline import kubernetes as cluster

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app imports Flask-WTF: pip install 'mlflow[auth]'")

pytestmark = pytest.mark.slow

SECRET = {"username": "ctloop", "password": "first-password-0123456789", "flask-secret-key": "k" * 32}


def mlflow_container() -> dict:
    deployment = next(d for d in yaml.safe_load_all((ROOT / "k8s/base/mlflow/mlflow.yaml").read_text())
                      if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


class ClusterMlflow:
    """The Deployment's MLflow in `folder`; start() again after changing `secret` is a pod restart."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.secret = folder, free_port(), dict(SECRET)
        self.uri = f"http://127.0.0.1:{self.port}"
        self._server: ServerProcess | None = None

    def command(self, container: dict) -> list[str]:
        data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
        args = []
        for arg in container["args"]:
            arg = arg.replace(f"{data}/", f"{self.folder}/")
            if arg.startswith("--host="):
                arg = "--host=127.0.0.1"
            elif arg.startswith("--port="):
                arg = f"--port={self.port}"
            elif arg.startswith("--allowed-hosts="):
                arg += f",127.0.0.1:{self.port}"
            args.append(arg)
        return [sys.executable, "-m", *container["command"], *args]

    def environment(self, container: dict) -> dict[str, str]:
        ini = (ROOT / "k8s/base/mlflow/basic_auth.ini").read_text().replace("////mlflow/", f"///{self.folder}/")
        (self.folder / "basic_auth.ini").write_text(ini)
        env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
        env |= {"HOME": str(self.folder / "home"), "MLFLOW_AUTH_CONFIG_PATH": str(self.folder / "basic_auth.ini"),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for entry in container["env"]:
            reference = entry.get("valueFrom", {}).get("secretKeyRef")
            if reference is not None:
                assert reference["name"] == cluster.MLFLOW_AUTH_SECRET
                env[entry["name"]] = self.secret[reference["key"]]
        return env

    def start(self) -> None:
        container = mlflow_container()
        self._server = ServerProcess(
            self.command(container), self.folder / "mlflow.log", self.healthy, name=f"MLflow at {self.uri}",
            start_timeout=120, cwd=self.folder, env=self.environment(container), append_log=True, terminate="group")
        self._server.start()

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterMlflow]:
    """One pod for the module (a start migrates two new databases with two workers: about 15
    CPU-seconds); the last test restarts it with another Secret."""
    folder = tmp_path_factory.mktemp("mlflow")
    (folder / "home").mkdir()
    mlflow = ClusterMlflow(folder)
    mlflow.start()
    try:
        yield mlflow
    finally:
        mlflow.stop()


def log_in(monkeypatch: pytest.MonkeyPatch, username: str, password: str) -> None:
    values = {"username": username, "password": password}
    for key, variable in cluster.MLFLOW_CREDENTIALS.items():
        monkeypatch.setenv(variable, values[key])


def test_only_the_secrets_admin_gets_in(server: ClusterMlflow, monkeypatch, tmp_path: Path) -> None:
    """Anonymous requests get 401 but for /health (the probes); with the Secret's name and
    password the registry registers a version, moves an alias and serves its artifacts back."""
    assert requests.get(f"{server.uri}/health", timeout=5).status_code == 200
    search = f"{server.uri}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=5).status_code == 401
    assert requests.get(search, timeout=5, auth=("ctloop", "wrong-password-0123")).status_code == 401
    with pytest.raises(registry.RegistryError, match="401"):
        registry.ensure_experiment("ctloop", server.uri)

    log_in(monkeypatch, SECRET["username"], SECRET["password"])
    model = tmp_path / "model.pt"
    model.write_bytes(b"a model file")
    version = registry.register_model_file("ctloop-champion", model, tracking_uri=server.uri)
    registry.promote("ctloop-champion", version, server.uri)
    assert registry.require_alias("ctloop-champion", "champion", server.uri) == version
    files = registry.download_version("ctloop-champion", version, tmp_path / "download", server.uri)
    assert files.model_file.read_bytes() == b"a model file"


def test_a_changed_secret_does_not_change_the_admins_password(server: ClusterMlflow, monkeypatch) -> None:
    """MLflow creates its admin from the Secret once, into the user database on the data claim; a
    restart with another password in the Secret keeps the first one (k8s/secrets/README.md says
    how to change it)."""
    search = f"{server.uri}/api/2.0/mlflow/registered-models/search"
    server.stop()
    server.secret["password"] = "second-password-0123456789"
    server.start()
    assert requests.get(search, timeout=5, auth=(SECRET["username"], SECRET["password"])).status_code == 200
    assert requests.get(search, timeout=5, auth=(SECRET["username"], server.secret["password"])).status_code == 401
