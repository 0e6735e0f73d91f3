"""Every endpoint of a real TorchServe: good input answers like in-process, bad input gets a 4xx
with a message, and the workers keep serving afterwards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from ctloop.wire import REQUEST_ID_HEADER, encode_batch
from ctloop.modelfile import load_model, predict_proba
from serving import store
from serving.client import TorchServeError

from hostile_support import deep_json, jpeg_claiming, long_number_json, npy_claiming, png_claiming

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module", autouse=True)
def registered(serving, model_files: dict[str, Path]) -> None:
    serving.deploy_archive(model_files["champion"], "champion", "1")
    serving.deploy_archive(model_files["b1"], "b1", "1")
    serving.deploy_archive(model_files["b2"], "eval", "1")


def in_process(model_file: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_model(model_file)
    return predict_proba(model, images)


def encode_picture(array: np.ndarray, fmt: str, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((array * 255).round().astype(np.uint8)).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def post(serving, body: bytes | None = None, **kwargs: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {serving.client.keys['inference']}", **kwargs.pop("headers", {})}
    return requests.post(f"{serving.server.inference_url}/predictions/champion", data=body, headers=headers,
                         timeout=30, **kwargs)


def test_champion_answers_like_in_process(serving, model_files, random_images) -> None:
    images = random_images(5, 10)
    expected = in_process(model_files["champion"], images)
    answer = serving.client.predict("champion", images)
    assert answer.labels == expected.argmax(axis=1).tolist()
    assert np.allclose(answer.confidences, expected.max(axis=1), atol=1e-5)
    assert answer.class_names == [f"digit-{label}" for label in answer.labels]
    assert answer.model_version == "1"


def test_champion_accepts_pictures_and_json(serving, model_files, random_images) -> None:
    image = random_images(1, 11)[0]
    big = np.kron(image, np.ones((4, 4)))  # 32x32: resized to 8x8 by the handler
    for body in (encode_picture(big, "PNG"), encode_picture(big, "JPEG"), encode_picture(big, "PNG", "RGB")):
        answer = post(serving, body)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()) == 1
    single = post(serving, json={"image": image.tolist()})
    batch = post(serving, json={"images": random_images(3, 12).tolist()})
    assert single.status_code == batch.status_code == 200
    expected = in_process(model_files["champion"], image[None])
    assert single.json()[0]["label"] == int(expected.argmax())
    assert len(batch.json()) == 3


def test_branch_and_eval_answer_batches(serving, model_files, random_images) -> None:
    images = random_images(64, 13)
    branch = serving.client.predict_batch("b1", images)
    expected = in_process(model_files["b1"], images)
    assert branch["labels"] == expected.argmax(axis=1).tolist()
    assert np.allclose(branch["confidences"], expected.max(axis=1), atol=1e-5)
    evaluated = serving.client.predict_batch("eval", images)
    assert np.allclose(evaluated["probabilities"], in_process(model_files["b2"], images), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"body": b"{not json", "headers": {"Content-Type": "application/json"}}, "malformed JSON"),
        ({"json": {"image": np.zeros((28, 28)).tolist()}}, "wrong image size 28x28: this model takes 8x8"),
        ({"body": encode_batch(np.zeros((2, 8, 8, 3), dtype=np.float32))}, "an extra channel axis"),
        ({"json": {"image": np.zeros((8, 8, 3)).tolist()}}, "an extra channel axis"),
        ({"json": {"images": []}}, "empty batch"),
        ({"json": {"image": (np.ones((8, 8)) * 3).tolist()}}, "pixel values must be in [0, 1]"),
        ({"body": encode_batch(np.zeros((300, 8, 8), dtype=np.float32))}, "too many images: 300"),
    ],
)
def test_bad_input_gets_400_and_the_worker_keeps_serving(serving, random_images, kwargs, message) -> None:
    answer = post(serving, kwargs.pop("body", None), **kwargs)
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    assert serving.client.predict("champion", random_images(1, 14)).labels


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [  # issue 13's table: each answered 503, 507 or 200 before
        (png_claiming(30000, 30000), {}, 413, "image too large: Image size (900000000 pixels) exceeds limit"),
        (png_claiming(12000, 12000), {}, 413, "12000x12000 is 144,000,000 pixels, at most 40,000,000"),
        (jpeg_claiming(12000, 12000), {}, 413, "12000x12000 is 144,000,000 pixels, at most 40,000,000"),
        (deep_json(100_000), JSON, 400, "JSON nested 100000 levels deep, at most 6"),
        (long_number_json(5000), JSON, 400, "JSON number with 5,000 digits in a row, at most 40"),
        (npy_claiming((100_000, 100_000, 100_000)), {}, 400, "claims shape (100000, 100000, 100000) of float32"),
        (None, {REQUEST_ID_HEADER: "x" * 6000}, 400, "got 6000 characters"),
    ],
    ids=["png-30000", "png-12000", "jpeg-12000", "json-deep", "json-digits", "npy-4PB", "request-id-6000"],
)
def test_hostile_requests_get_a_4xx_and_a_good_one_right_after_a_200(
    serving, random_images, body: bytes | None, headers: dict, status: int, message: str
) -> None:
    logged = store.read_store(serving.server.store_dir).records
    answer = post(serving, body if body is not None else encode_batch(random_images(1, 16)), headers=headers)
    assert answer.status_code == status and message in answer.json()["error"], answer.text
    assert store.read_store(serving.server.store_dir).records == logged
    assert serving.client.predict("champion", random_images(1, 14)).labels


def test_oversized_request_is_refused_by_torchserve(serving, random_images) -> None:
    with pytest.raises(TorchServeError) as refused:
        serving.client.predict("champion", b"\x89PNG" + bytes(5 * 1024 * 1024))
    assert refused.value.status == 413 and "Too Large" in refused.value.message
    assert serving.client.predict("champion", random_images(1, 15)).labels


def test_bad_batch_input_gets_400(serving) -> None:
    with pytest.raises(TorchServeError) as refused:
        serving.client.predict_batch("b1", np.zeros((3, 16, 16), dtype=np.float32))
    assert refused.value.status == 400 and "wrong image size 16x16" in refused.value.message


def test_wrong_key_is_refused(serving) -> None:
    answer = post(serving, b"{}", headers={"Authorization": "Bearer wrong"})
    assert answer.status_code == 400 and "Token Authorization failed" in answer.text


def test_a_client_request_id_names_the_logged_prediction(serving, random_images) -> None:
    answer = serving.client.predict("champion", random_images(2, 31), request_id="part-4711")
    assert answer.request_id == "part-4711"
    records = store.read_store(serving.server.store_dir).records
    assert [(record["request_id"], record["item"]) for record in records[-2:]] == [("part-4711", 0), ("part-4711", 1)]


def test_without_a_client_id_the_answer_names_torchserves_id(serving, random_images) -> None:
    answer = serving.client.predict("champion", random_images(1, 32))
    records = store.read_store(serving.server.store_dir).records
    assert answer.request_id and records[-1]["request_id"] == answer.request_id


def test_the_metrics_endpoint_speaks_prometheus(serving, random_images) -> None:
    """What a Prometheus scrape of TorchServe's metrics port sees: request counts and latencies
    per model and version, parsed with prometheus_client's own parser."""
    before = _champion_requests(serving)
    serving.client.predict("champion", random_images(3, 41))
    samples = {sample.name for family in text_string_to_metric_families(
        requests.get(f"{serving.server.metrics_url}/metrics", timeout=10).text) for sample in family.samples}
    # the names the Grafana dashboard of k8s/components/monitoring asks for (tests/unit/test_monitoring_manifests.py)
    assert {"ts_inference_requests_total", "ts_inference_latency_microseconds_total",
            "ts_queue_latency_microseconds_total"} <= samples, [name for name in sorted(samples) if name.startswith("ts_")]
    assert _champion_requests(serving) == before + 1
    text = requests.get(f"{serving.server.metrics_url}/metrics", timeout=10).text
    labelled = [sample.labels for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "ts_inference_requests_total"]
    assert labelled and all({"model_name", "model_version"} <= labels.keys() for labels in labelled)  # its grouping


def _champion_requests(serving) -> float:
    text = requests.get(f"{serving.server.metrics_url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "ts_inference_requests"
               for sample in family.samples
               if sample.name == "ts_inference_requests_total" and sample.labels.get("model_name") == "champion")
