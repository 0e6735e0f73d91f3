"""Run the pipeline in its images on one machine: every stage in its own stage image through
kfp.local's DockerRunner, TorchServe in the serving image, MLflow as a server on the host.

The layout is the cluster's (kubeflow_pipeline/kubernetes.py, k8s/base/torchserve): the prediction
store is mounted at /mnt/ctloop/store in the stages that need it and in TorchServe; the model store
at /mnt/ctloop/model-store in the stages and at /home/model-server/model-store in TorchServe. The
stage images run as UID 10001 and the serving image as UID 1000, both in GID 1000, so the shared
directories belong to that group (what fsGroup does on the cluster). The stages run on the host's
network and reach TorchServe's published ports and the MLflow server at 127.0.0.1; the TorchServe
keys reach them as the cluster's Secret does, as CTLOOP_TS_MANAGEMENT_KEY and
CTLOOP_TS_INFERENCE_KEY.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctloop_app.kfp_docker import keep_exit_status
from kubeflow_pipeline.kubernetes import MODEL_STORE_MOUNT, STORE_MOUNT

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
    from kfp import local

    from serving.client import TorchServeClient

SHARED_GID = 1000  # the group of the stage images' user (10001) and of the serving user (1000)
SERVING_HOME = "/home/model-server"
SERVING_MODEL_STORE = f"{SERVING_HOME}/model-store"
SERVING_STATE_DIR = f"{SERVING_HOME}/serving-state"  # where the Deployment mounts the state's ConfigMap


class ServingContainerError(RuntimeError):
    """The serving container stopped or never answered /ping; the message carries its log tail."""


def shared_dir(path: str | Path) -> Path:
    """`path`, created and writable by the images' users: group GID 1000 with the setgid bit when
    this process may chown (root, as on the cluster's fsGroup), else open to everyone."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, -1, SHARED_GID)
        path.chmod(0o2775)
    else:
        path.chmod(0o777)
    return path


@dataclass
class ServingContainer:
    """TorchServe running in the serving image, its ports published on 127.0.0.1."""

    container: Container
    inference_url: str
    management_url: str
    keys: dict[str, str]
    proxy: Container | None = None  # the pod's `proxy` container, in front when the keys are fixed

    def client(self) -> TorchServeClient:
        from serving.client import TorchServeClient

        return TorchServeClient(self.inference_url, self.management_url, self.keys)

    def log_tail(self, name: str = "ts_log.log", lines: int = 40) -> str:
        _, output = self.container.exec_run(["sh", "-c", f"tail -n {lines} {SERVING_HOME}/logs/{name}"])
        return output.decode(errors="replace")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.remove(force=True)
        self.container.remove(force=True)


def _key_file(container: Container) -> dict | None:
    code, output = container.exec_run(["cat", f"{SERVING_HOME}/key_file.json"])
    return json.loads(output) if code == 0 and output.strip() else None


def start_serving(engine: docker.DockerClient, image: str, model_store: Path, store_dir: Path,
                  timeout: float = 180.0, models: tuple[str, ...] = (),
                  keys: dict[str, str] | None = None, state_dir: Path | None = None,
                  java_options: str = "") -> ServingContainer:
    """Start `image` as the cluster starts it (`serve`: the model store's desired state), with
    `model_store` and `store_dir` mounted where the TorchServe Deployment mounts its claims; wait
    for a healthy /ping and, for each name in `models`, a ready worker of its default version.

    With `keys` ({"management", "inference"}), as the cluster's pod: TorchServe gets them as
    CTLOOP_TS_*_KEY and listens on localhost only, and a second container running `proxy` in its
    network namespace checks them on the published ports (serving/proxy.py). Without, TorchServe
    makes its own keys (key_file.json) and checks them itself. With `state_dir`, the desired state
    comes from there (mounted where the Deployment mounts its ConfigMap), not the model store.
    `java_options` go to TorchServe's JVM as JAVA_TOOL_OPTIONS, beside the image's own vmargs.
    """
    environment = {"CTLOOP_STORE_DIR": STORE_MOUNT}
    if java_options:
        environment["JAVA_TOOL_OPTIONS"] = java_options
    volumes = {str(Path(model_store).resolve()): {"bind": SERVING_MODEL_STORE, "mode": "rw"},
               str(Path(store_dir).resolve()): {"bind": STORE_MOUNT, "mode": "rw"}}
    if keys is not None:
        environment |= {"CTLOOP_TS_MANAGEMENT_KEY": keys["management"], "CTLOOP_TS_INFERENCE_KEY": keys["inference"]}
    if state_dir is not None:
        environment["CTLOOP_SERVING_STATE_DIR"] = SERVING_STATE_DIR
        volumes[str(Path(state_dir).resolve())] = {"bind": SERVING_STATE_DIR, "mode": "ro"}
    container = engine.containers.run(
        image, ["serve"], detach=True,
        ports={"8080/tcp": ("127.0.0.1", None), "8081/tcp": ("127.0.0.1", None)},
        environment=environment, volumes=volumes,
    )
    proxy = None
    try:
        if keys is not None:
            proxy = engine.containers.run(image, ["proxy"], detach=True, network_mode=f"container:{container.id}",
                                          environment={name: value for name, value in environment.items()
                                                       if name.startswith("CTLOOP_TS_")})
        return _wait_healthy(container, proxy, keys, timeout, models)
    except BaseException:
        if proxy is not None:
            proxy.remove(force=True)
        container.remove(force=True)
        raise


def _wait_healthy(container: Container, proxy: Container | None, keys: dict[str, str] | None, timeout: float,
                  models: tuple[str, ...]) -> ServingContainer:
    from ctloop import http

    container.reload()
    ports = {port: container.ports[f"{port}/tcp"][0]["HostPort"] for port in (8080, 8081)}
    deadline = time.monotonic() + timeout
    while True:
        for each in filter(None, (container, proxy)):
            each.reload()
            if each.status not in ("created", "running"):
                raise ServingContainerError(f"the serving container stopped: {each.attrs['State']}\n"
                                            f"{each.logs(tail=40).decode(errors='replace')}")
        found = keys or _key_file(container)
        if found:
            if keys is None:
                found = {"management": found["management"]["key"], "inference": found["inference"]["key"]}
            serving = ServingContainer(container, f"http://127.0.0.1:{ports[8080]}", f"http://127.0.0.1:{ports[8081]}",
                                       found, proxy)
            answer = http.probe(f"{serving.inference_url}/ping", timeout=2,
                                headers={"Authorization": f"Bearer {serving.keys['inference']}"})
            if answer is not None and answer.status_code == 200 and _models_ready(serving, models):
                return serving
        if time.monotonic() > deadline:
            _, log = container.exec_run(["sh", "-c", f"tail -n 40 {SERVING_HOME}/logs/ts_log.log"])
            raise ServingContainerError(f"no healthy TorchServe in the serving container after {timeout} s; "
                                        f"ts_log.log:\n{log.decode(errors='replace')}")
        time.sleep(0.5)


def _models_ready(serving: ServingContainer, models: tuple[str, ...]) -> bool:
    if not models:
        return True
    from serving.client import TorchServeError

    client = serving.client()
    try:
        return all(client.ready_workers(name, client.default_version(name)) for name in models)
    except TorchServeError:
        return False
    finally:
        client.close()


def stage_mounts(store_dir: Path, model_store: Path) -> list:
    """The claims as bind mounts, at the paths kubeflow_pipeline/kubernetes.py mounts them."""
    from docker.types import Mount

    return [Mount(STORE_MOUNT, str(Path(store_dir).resolve()), type="bind"),
            Mount(MODEL_STORE_MOUNT, str(Path(model_store).resolve()), type="bind")]


def docker_runner(store_dir: Path, model_store: Path, environment: dict[str, str]) -> local.DockerRunner:
    """kfp.local's DockerRunner: each task in its component's image, on the host's network, with
    the prediction store and model store mounted and `environment` set. (DockerRunner refuses
    `volumes=`, which it uses for the pipeline root; `mounts=` carries the claims.) A task whose
    container exits non-zero fails, however fast (ctloop_app.kfp_docker)."""
    from kfp import local

    keep_exit_status()
    return local.DockerRunner(network_mode="host", mounts=stage_mounts(store_dir, model_store),
                              environment=dict(environment))


def stage_environment(serving: ServingContainer, tracking_uri: str, slack_outbox: Path) -> dict[str, str]:
    """What the cluster injects into the stages (Secret and ConfigMap env), for this machine's servers."""
    return {
        "CTLOOP_TS_MANAGEMENT_KEY": serving.keys["management"],
        "CTLOOP_TS_INFERENCE_KEY": serving.keys["inference"],
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CTLOOP_SLACK_OUTBOX": str(slack_outbox),
    }


def pipeline_arguments(serving: ServingContainer, tracking_uri: str, golden_set: Path,
                       registered_model: str) -> dict[str, Any]:
    """The pipeline's service parameters as the cluster gives them: the mount paths, not the host's."""
    return {
        "store_dir": STORE_MOUNT,
        "model_store": MODEL_STORE_MOUNT,
        "golden_set_uri": str(Path(golden_set).resolve()),
        "ts_inference_url": serving.inference_url,
        "ts_management_url": serving.management_url,
        "mlflow_tracking_uri": tracking_uri,
        "registered_model": registered_model,
    }


def prepare_pipeline_root(pipeline_root: Path, golden_set: Path) -> tuple[Path, Path]:
    """The pipeline root, writable by the stage images' user (DockerRunner mounts it at its own
    path), with a copy of the golden set inside it, where the containers see it, and a `slack` folder
    for the Slack outbox; returns the root and the golden set's copy."""
    pipeline_root = shared_dir(Path(pipeline_root).resolve())
    inputs = shared_dir(pipeline_root / "inputs")
    shared_dir(pipeline_root / "slack")  # for CTLOOP_SLACK_OUTBOX: the stages write messages there
    golden = inputs / Path(golden_set).name
    shutil.copyfile(golden_set, golden)
    return pipeline_root, golden
