"""The pipeline in its images, end to end: every stage in its own stage image through kfp.local's
DockerRunner (host network, the prediction store and model store bind-mounted at the cluster's
paths, the images' non-root users), TorchServe in the serving image with the model store and the
prediction store mounted as the Deployment mounts them, and a real MLflow server on the host.

The images are the ones `make images` builds, built here by the same code (the engine's layer
cache makes that quick once they exist; tests/integration/test_images.py checks the images
themselves). Without an engine that answers, the module is skipped saying so; with
CTLOOP_REQUIRE_DOCKER=1 that is a failure instead. Times are printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pipeline_support import declare, play

from ctloop import registry
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop_app.container_run import (
    ServingContainer,
    docker_runner,
    pipeline_arguments,
    prepare_pipeline_root,
    shared_dir,
    stage_environment,
    start_serving,
)
from ctloop_app.install import BRANCH_VERSION, REGISTERED_MODEL
from ctloop_app.kfp_docker import keep_exit_status, run_docker_container
from ctloop_app.local_run import LocalRun, run_locally
from ctloop_app.mlflow_server import MlflowServer
from image_support import IMAGES, TEST_JAVA_OPTIONS
from kubeflow_pipeline.pipeline import build_pipeline
from serving.archive import build_archive
from serving.client import TorchServeClient
from serving.store import read_store

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 150
SMALL = PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30)

pytestmark = [pytest.mark.containers, pytest.mark.slow]


@dataclass
class ContainerStack:
    """What `play` needs (client, store_dir) and what a cycle runs against."""

    work_dir: Path
    serving: ServingContainer
    client: TorchServeClient
    tracking_uri: str

    @property
    def store_dir(self) -> Path:
        return self.work_dir / "store"

    @property
    def model_store(self) -> Path:
        return self.work_dir / "model-store"

    @property
    def pipeline_root(self) -> Path:
        return self.work_dir / "pipeline_root"

    @property
    def slack_outbox(self) -> Path:
        return self.pipeline_root / "slack" / "outbox.jsonl"  # where the stages see it: under the mounted root


@dataclass
class ContainerRun:
    """A host-side record of every container the DockerRunner started: function, image, exit code."""

    function: str
    image: str
    exit_code: int


@pytest.fixture
def containers(monkeypatch: pytest.MonkeyPatch) -> list[ContainerRun]:
    """Every task container kfp.local runs during the test, as the Docker engine ran it."""
    from kfp.local import docker_task_handler

    keep_exit_status()  # what docker_runner() installs, recorded rather than replaced

    runs: list[ContainerRun] = []
    original = docker_task_handler.run_docker_container

    def recording(client, image, command, volumes, **kwargs) -> int:
        code = original(client, image, command, volumes, **kwargs)
        function = command[command.index("--function_to_execute") + 1]
        runs.append(ContainerRun(function, image, code))
        return code

    monkeypatch.setattr(docker_task_handler, "run_docker_container", recording)
    return runs


@pytest.fixture
def cstack(engine, built, boot, mlflow_schema: Path, tmp_path: Path) -> Iterator[ContainerStack]:
    """The champion v1 registered in a new MLflow server's registry (alias `champion`); champion
    v1, B1 and B2 archives in the model store; TorchServe started from them in the serving image."""
    started = time.monotonic()
    work = tmp_path / "stack"
    store, model_store = shared_dir(work / "store"), shared_dir(work / "model-store")
    (work / "mlflow").mkdir(parents=True)
    shutil.copyfile(mlflow_schema, work / "mlflow" / "mlflow.db")  # migrated already: starts quicker
    with MlflowServer(work / "mlflow") as mlflow:
        version = registry.register_model_file(REGISTERED_MODEL, boot.model_files["champion"], boot.train_set,
                                               tracking_uri=mlflow.tracking_uri)
        registry.promote(REGISTERED_MODEL, version, mlflow.tracking_uri)
        for role in ("champion", "b1", "b2"):
            build_archive(boot.model_files[role], role, version if role == "champion" else BRANCH_VERSION,
                          model_store)
        declare(model_store, {"champion": version, "b1": BRANCH_VERSION, "b2": BRANCH_VERSION})
        serving = start_serving(engine, IMAGES.image("serving"), model_store, store, models=("champion", "b1", "b2"),
                                java_options=TEST_JAVA_OPTIONS)
        client = serving.client()
        print(f"stack (MLflow server, serving container with 3 models ready) in {time.monotonic() - started:.1f} s")
        try:
            yield ContainerStack(work, serving, client, mlflow.tracking_uri)
        finally:
            client.close()
            serving.stop()


def cycle(stack: ContainerStack, boot, config: PipelineConfig) -> LocalRun:
    pipeline_root, golden = prepare_pipeline_root(stack.pipeline_root, boot.golden_set)
    runner = docker_runner(stack.store_dir, stack.model_store,
                           stage_environment(stack.serving, stack.tracking_uri, stack.slack_outbox))
    arguments = pipeline_arguments(stack.serving, stack.tracking_uri, golden, REGISTERED_MODEL)
    run = run_locally(build_pipeline(config, IMAGES), arguments, pipeline_root, runner=runner)
    print(f"cycle in containers: {run.seconds:.1f} s; " +
          ", ".join(f"{name} {task.seconds:.1f}" for name, task in run.tasks.items()))
    return run


def assert_every_task_ran_in_its_image(run: LocalRun, containers: list[ContainerRun]) -> None:
    from kubeflow_pipeline.pipeline import STAGE_OF

    stage_of = {func.__name__: stage for func, stage in STAGE_OF.items()}
    assert containers, "no task ran in a container"
    for ran in containers:
        assert ran.image == IMAGES.image(stage_of[ran.function]), ran
        assert ran.exit_code == 0, ran
    tasks = {name for name in run.tasks if not name.startswith("importer")}
    assert sorted(ran.function.replace("_", "-") for ran in containers) == sorted(tasks)
    assert all(task.status == "SUCCESS" for task in run.tasks.values()), run.tasks


def outbox(stack: ContainerStack) -> list[str]:
    import json

    if not stack.slack_outbox.exists():
        return []
    return [json.loads(line)["message"]["text"] for line in stack.slack_outbox.read_text().splitlines()]


def test_drift_retrains_in_the_images_and_the_served_champion_answers_from_v2(
        cstack: ContainerStack, boot, containers: list[ContainerRun], engine) -> None:
    # A clean window, then a blurred one: the drift stage measures in its image (the champion's
    # embeddings of both, read from the mounted store) and trips beside the yield.
    answered = len(play(cstack, boot, drift=False, window=WINDOW)) + len(play(cstack, boot, drift=True, window=WINDOW))
    run = cycle(cstack, boot, SMALL)
    assert run.succeeded, run.error
    assert_every_task_ran_in_its_image(run, containers)
    assert {ran.function for ran in containers} >= {"monitor_op", "drift_op", "collect_op", "validate_op", "consensus_op",
                                                    "train_op", "analyze_op", "deploy_op", "notify_deployed_op"}
    assert run.task("deploy-op").parameters == {"old_version": "1", "new_version": "2", "status": "deployed"}

    # The deploy stage wrote v2's archive into the model-store volume as its own user, and the
    # TorchServe in the serving container registered it from there and made it the default.
    archive = cstack.model_store / "champion-v2.mar"
    assert archive.is_file() and archive.stat().st_uid == 10001, sorted(cstack.model_store.iterdir())
    assert cstack.client.default_version("champion") == "2"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", cstack.tracking_uri) == "2"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "previous-champion", cstack.tracking_uri) == "1"
    assert cstack.client.predict("champion", ImageSet.load(boot.golden_set).images[:1]).model_version == "2"
    texts = outbox(cstack)
    assert texts[0].startswith("Retraining started on yield and drift: champion v1 yield") and texts[-1] == "Deployed champion v2 (was v1)"

    # The champion handler in the container keeps logging to the mounted prediction store.
    records = read_store(cstack.store_dir).records
    assert len(records) >= answered + 1

    # Killed (SIGKILL, as the OOM killer does) and replaced by a new container on the same volumes,
    # as Kubernetes replaces a pod: it serves exactly the desired state the deploy wrote, v2.
    cstack.serving.container.kill()
    again = start_serving(engine, IMAGES.image("serving"), cstack.model_store, cstack.store_dir,
                          models=("champion", "b1", "b2"), java_options=TEST_JAVA_OPTIONS)
    try:
        with contextlib.closing(again.client()) as client:
            assert (client.default_version("champion"), client.versions("champion")) == ("2", ["1", "2"])
            assert client.predict("champion", ImageSet.load(boot.golden_set).images[:1]).model_version == "2"
    finally:
        again.stop()


def test_a_challenger_that_is_not_better_enough_is_not_deployed_in_the_images(
        cstack: ContainerStack, boot, containers: list[ContainerRun]) -> None:
    play(cstack, boot, drift=True, window=WINDOW)
    run = cycle(cstack, boot, SMALL.with_overrides(min_improvement=0.9))
    assert run.succeeded, run.error
    assert_every_task_ran_in_its_image(run, containers)
    assert run.task("deploy-op") is None and "notify_not_deployed_op" in {ran.function for ran in containers}
    assert cstack.client.default_version("champion") == "1"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "champion", cstack.tracking_uri) == "1"
    assert registry.get_version_by_alias(REGISTERED_MODEL, "challenger", cstack.tracking_uri) == "2"
    assert not (cstack.model_store / "champion-v2.mar").exists()
    not_deployed = [text for text in outbox(cstack) if text.startswith("Challenger not deployed")]
    assert len(not_deployed) == 1 and "required improvement of 0.900" in not_deployed[0]


def test_the_serving_pod_checks_the_secrets_fixed_keys_across_a_restart(engine, built, boot, tmp_path: Path) -> None:
    """As on the cluster: TorchServe given the Secret's keys hides behind the `proxy` container,
    which lets through only requests with those keys; a new pod on the same volumes takes the
    same keys (TorchServe's own keys changed at every start)."""
    store, model_store = shared_dir(tmp_path / "store"), shared_dir(tmp_path / "model-store")
    build_archive(boot.model_files["champion"], "champion", "1", model_store)
    declare(model_store, {"champion": "1"})
    keys = {"management": secrets.token_hex(32), "inference": secrets.token_hex(32)}
    image = ImageSet.load(boot.golden_set).images[:1]
    for _ in range(2):
        pod = start_serving(engine, IMAGES.image("serving"), model_store, store, models=("champion",), keys=keys,
                            java_options=TEST_JAVA_OPTIONS)
        try:
            with contextlib.closing(pod.client()) as client:
                assert client.predict("champion", image).model_version == "1"
                assert client.models() == ["champion"]
            for url, key in ((f"{pod.inference_url}/predictions/champion", keys["management"]),
                             (f"{pod.management_url}/models", keys["inference"])):
                refused = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
                assert refused.status_code == 401 and "Bearer <the" in refused.json()["message"], url
            assert pod.container.exec_run(["ls", "/home/model-server/key_file.json"]).exit_code != 0
        finally:
            pod.stop()


def test_a_stage_importing_what_its_image_lacks_fails(engine, built, tmp_path: Path,
                                                       containers: list[ContainerRun]) -> None:
    """torch is in this environment but not in the monitor image: run there, the import fails."""
    from kfp import dsl

    @dsl.component(base_image=IMAGES.image("monitor"), install_kfp_package=False)
    def needs_torch():  # no annotations: this module's `from __future__ import annotations` would make them strings
        import torch  # noqa: F401

    @dsl.pipeline(name="needs-torch")
    def needs_torch_pipeline():
        needs_torch()

    store, model_store = shared_dir(tmp_path / "store"), shared_dir(tmp_path / "model-store")
    run = run_locally(needs_torch_pipeline, {}, shared_dir(tmp_path / "pipeline_root"),
                      runner=docker_runner(store, model_store, {}))
    assert not run.succeeded
    assert [(ran.function, ran.image) for ran in containers] == [("needs_torch", IMAGES.image("monitor"))]
    assert containers[0].exit_code != 0


def test_a_container_that_fails_fast_is_reported_failed_every_time(engine, built) -> None:
    """kfp's own run_docker_container returned 0 for about 1 in 10 of these (kubeflow/pipelines#13332)."""
    command = ["python", "-c", "import sys; sys.exit(3)"]
    codes = [run_docker_container(engine, IMAGES.image("monitor"), command, {}) for _ in range(10)]
    assert codes == [3] * 10
    assert not engine.containers.list(all=True, filters={"ancestor": IMAGES.image("monitor")})
