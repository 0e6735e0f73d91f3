"""The images `make images` builds, built by the same code and run with the local Docker engine.

Every stage image imports its component; the serving image runs the tested runtime (the torch,
TorchServe and archiver of this venv, Java 17, our entrypoint as the non-root user whose group the
stage images share), answers /ping, refuses the management API without its key (400 in TorchServe 0.12) and serves a
champion archive like in-process inference.

Without an engine that answers, the module is skipped saying so; with CTLOOP_REQUIRE_DOCKER=1 that
is a failure instead. The first build on a machine takes minutes (torch into three images); the
engine's layer cache makes later runs quick. Each build's time is printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from image_support import IMAGES
from ctloop import wire
from kubeflow_pipeline.images import STAGES
from serving import store

ROOT = Path(__file__).resolve().parents[2]
SERVING_ENTRYPOINT = ["/usr/bin/tini", "-g", "--", "/usr/local/bin/ctloop-serving-entrypoint"]
SHARED_GID = 1000  # the group of the serving user and of the stage images' user
HOME = "/home/model-server"

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def exec_output(container, *command: str) -> str:
    code, output = container.exec_run(list(command))
    assert code == 0, f"{' '.join(command)} exited {code}: {output.decode()}"
    return output.decode()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_imports_its_component_as_the_shared_group(engine, built, stage: str) -> None:
    ref = IMAGES.image(stage)
    config = engine.images.get(ref).attrs["Config"]
    assert config["User"] == f"10001:{SHARED_GID}"
    # One container per stage: the imports, in one Python process (torch alone costs 1.4 CPU-seconds
    # a start), then who runs it (exec_run needs a running container).
    container = engine.containers.run(ref, ["sleep", "120"], detach=True)
    try:
        torch_version = "import torch; print(torch.__version__)" if stage in ("train", "analyze") else ""
        printed = exec_output(container, "python", "-c",
                              f"import components.{stage}.component, kfp.dsl.executor_main; {torch_version}")
        assert exec_output(container, "id", "-u").strip() == "10001"
        assert exec_output(container, "id", "-g").strip() == str(SHARED_GID)
        if torch_version:
            import torch

            assert printed.strip() == torch.__version__
    finally:
        container.remove(force=True)


def test_serving_image_starts_torchserve_through_our_entrypoint(engine, built) -> None:
    config = engine.images.get(IMAGES.image("serving")).attrs["Config"]
    assert config["Entrypoint"] == SERVING_ENTRYPOINT
    assert config["Cmd"] == ["serve"]
    assert config["User"] == f"1000:{SHARED_GID}" and config["WorkingDir"] == HOME
    assert {"8080/tcp", "8081/tcp", "8082/tcp"} <= set(config["ExposedPorts"])


def test_serving_image_runs_the_torch_torchserve_and_archiver_training_uses(engine, built) -> None:
    import importlib.metadata

    import torch

    ref = IMAGES.image("serving")
    container = engine.containers.run(ref, ["sleep", "120"], detach=True)
    try:
        # Through the entrypoint: anything but `serve` is run as a command.
        assert exec_output(container, "python", "-c", "import torch; print(torch.__version__)").strip() == torch.__version__
        versions = exec_output(container, "python", "-c", "import importlib.metadata as m; "
                               "print(m.version('torchserve'), m.version('torch-model-archiver'))").split()
        assert versions == [importlib.metadata.version("torchserve"), importlib.metadata.version("torch-model-archiver")]
        assert 'version "17.' in exec_output(container, "sh", "-c", "java -version 2>&1")
        assert exec_output(container, "torch-model-archiver", "--help")
    finally:
        container.remove(force=True)
    # The entrypoint runs other commands as given.
    assert engine.containers.run(ref, ["python", "-c", "print(6 * 7)"], remove=True).decode().strip() == "42"


@pytest.fixture(scope="module")
def served(engine, built, tmp_path_factory) -> Iterator[dict]:
    """The serving image started as the cluster starts it (`serve`), with a champion and a B1
    archive in its model store and a prediction store owned by the shared group (as fsGroup
    makes it on the cluster), its ports published on 127.0.0.1."""
    from serving_support import write_model

    from serving.archive import build_archive

    work = tmp_path_factory.mktemp("serving-image")
    model_store, store = work / "model-store", work / "store"
    models = {role: write_model(role, work / f"{role}.pt", seed=index) for index, role in enumerate(("champion", "b1"))}
    for role, model in models.items():
        build_archive(model, role, "1", model_store)
    store.mkdir()
    if os.geteuid() == 0:
        os.chown(store, -1, SHARED_GID)
        store.chmod(0o2775)
    else:
        store.chmod(0o777)
    container = engine.containers.run(
        IMAGES.image("serving"), ["serve"], detach=True,
        ports={"8080/tcp": ("127.0.0.1", None), "8081/tcp": ("127.0.0.1", None)},
        environment={"CTLOOP_STORE_DIR": "/mnt/ctloop/store"},
        volumes={str(model_store): {"bind": f"{HOME}/model-store", "mode": "ro"},
                 str(store): {"bind": "/mnt/ctloop/store", "mode": "rw"}},
    )
    try:
        started = time.monotonic()
        container.reload()
        ports = {name: container.ports[f"{port}/tcp"][0]["HostPort"] for name, port in
                 (("inference", 8080), ("management", 8081))}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        ping = _wait_for_ping(container, urls["inference"], timeout=180)
        print(f"serving container: /ping 200 after {time.monotonic() - started:.1f} s")
        yield {"container": container, "urls": urls, "ping": ping, "models": models, "store": store}
    finally:
        container.remove(force=True)


def _key_file(container) -> dict | None:
    code, output = container.exec_run(["cat", f"{HOME}/key_file.json"])
    return json.loads(output) if code == 0 and output.strip() else None


def _wait_for_ping(container, inference_url: str, timeout: float) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            pytest.fail(f"the serving container stopped ({container.attrs['State']})")
        keys = _key_file(container)
        headers = {"Authorization": f"Bearer {keys['inference']['key']}"} if keys else {}
        try:
            answer = requests.get(f"{inference_url}/ping", headers=headers, timeout=5)
            if answer.status_code == 200 and answer.json().get("status") == "Healthy":
                return answer
        except requests.RequestException:
            pass
        time.sleep(1)
    _, log = container.exec_run(["sh", "-c", f"tail -n 40 {HOME}/logs/ts_log.log"])
    pytest.fail(f"no healthy /ping from the serving container in {timeout} s; ts_log.log:\n{log.decode()}")


def test_serving_container_answers_ping(served) -> None:
    assert served["ping"].json() == {"status": "Healthy"}


def test_serving_container_runs_torchserve_as_the_non_root_user(served) -> None:
    container = served["container"]
    assert exec_output(container, "id", "-u").strip() == "1000"
    assert exec_output(container, "id", "-g").strip() == str(SHARED_GID)
    processes = exec_output(container, "sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done")
    assert "tini" in processes and "org.pytorch.serve.ModelServer" in processes, processes
    # The shipped log configuration: size-capped files under LOG_LOCATION, no access log lines.
    assert "ts_log.log" in exec_output(container, "ls", f"{HOME}/logs")


def test_serving_container_keeps_token_authorization_on(served) -> None:
    """TorchServe 0.12 refuses a missing or wrong key with 400 InvalidKeyException (not 401)."""
    urls, keys = served["urls"], _key_file(served["container"])
    assert keys and {"management", "inference", "API"} <= keys.keys()

    def refused(answer: requests.Response) -> bool:
        return answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"

    assert refused(requests.get(f"{urls['management']}/models", timeout=10))
    assert refused(requests.get(f"{urls['management']}/models", timeout=10,
                                headers={"Authorization": f"Bearer {keys['inference']['key']}"}))
    assert refused(requests.post(f"{urls['inference']}/predictions/champion", data=b"", timeout=10))
    assert refused(requests.get(f"{urls['inference']}/ping", timeout=10))
    answer = requests.get(f"{urls['management']}/models", timeout=10,
                          headers={"Authorization": f"Bearer {keys['management']['key']}"})
    assert answer.status_code == 200
    assert sorted(model["modelName"] for model in answer.json()["models"]) == ["b1", "champion"]


def test_serving_container_registers_only_from_its_model_store(served) -> None:
    urls, keys = served["urls"], _key_file(served["container"])
    answer = requests.post(f"{urls['management']}/models", timeout=30,
                           params={"url": "https://example.com/champion.mar", "model_name": "outsider"},
                           headers={"Authorization": f"Bearer {keys['management']['key']}"})
    assert answer.status_code == 404 and "does not match any allowed URL" in answer.text, answer.text


def test_serving_container_answers_like_in_process_and_logs_to_the_shared_store(served) -> None:
    from serving_support import random_images

    from ctloop.modelfile import load_model, predict_proba
    from serving.client import TorchServeClient

    keys = _key_file(served["container"])
    client = TorchServeClient(served["urls"]["inference"], served["urls"]["management"],
                              {"management": keys["management"]["key"], "inference": keys["inference"]["key"]})
    deadline = time.monotonic() + 120
    while not all(client.ready_workers(role, "1") for role in ("champion", "b1")):
        if time.monotonic() > deadline:
            _, log = served["container"].exec_run(["sh", "-c", f"tail -n 30 {HOME}/logs/model_log.log"])
            pytest.fail(f"the models' workers never became ready; model_log.log:\n{log.decode()}")
        time.sleep(1)
    images = random_images(4, 7)
    model, _ = load_model(served["models"]["champion"])
    expected = predict_proba(model, images)
    answer = client.predict("champion", images)
    assert answer.labels == expected.argmax(axis=1).tolist()
    assert np.allclose(answer.confidences, expected.max(axis=1), atol=1e-5)
    branch = client.predict_batch("b1", images)
    b1, _ = load_model(served["models"]["b1"])
    assert branch["labels"] == predict_proba(b1, images).argmax(axis=1).tolist()
    client.close()
    assert len(store.read_store(served["store"]).records) == len(images)
    written = list((served["store"] / wire.SEGMENTS_DIR).iterdir())
    assert written and all((path.stat().st_uid, path.stat().st_gid) == (1000, SHARED_GID) for path in written)
