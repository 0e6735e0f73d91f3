"""Handler unit tests: decode and validation paths with a small fake TorchServe context."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctloop import wire
from ctloop.modelfile import load_model
from ctloop.wire import encode_batch
from serving import store
from serving.archive import HANDLER_DIR

from hostile_support import deep_json, jpeg_claiming, long_number_json, npy_claiming, png_claiming

sys.path.insert(0, str(HANDLER_DIR))  # TorchServe puts the unpacked archive on sys.path the same way

from branch_handler import BranchHandler  # noqa: E402
from champion_handler import ChampionHandler  # noqa: E402
from eval_handler import EvalHandler  # noqa: E402
from ts.context import Context, RequestProcessor  # noqa: E402


class FakeMetrics:
    def add_time(self, *args: object, **kwargs: object) -> None:
        """BaseHandler.handle reports its time here; the tests do not need it."""


def make_context(model_dir: Path, name: str, headers: list[dict] | None = None) -> Context:
    manifest = {"model": {"modelName": name, "modelVersion": "7", "serializedFile": "model.pt"}}
    context = Context(name, str(model_dir), manifest, 1, None, "0.12.0", metrics=FakeMetrics(),
                      model_yaml_config={"torch_threads": 1, "max_images_per_request": 4,
                                         "max_image_pixels": 1_000_000, "max_json_bytes": 65536})
    context.request_processor = [RequestProcessor(h) for h in headers or [{}]]
    context.request_ids = {index: f"req-{index}" for index in range(len(headers or [{}]))}
    return context


def loaded(handler_class: type, model_file: Path, tmp_path: Path, name: str, headers: list[dict] | None = None):
    (tmp_path / "model.pt").write_bytes(model_file.read_bytes())
    handler = handler_class()
    context = make_context(tmp_path, name, headers)
    handler.initialize(context)
    return handler, context


def run(handler, context: Context, bodies: list[object]) -> list[tuple[int, object]]:
    """Answers of one TorchServe batch as (status, parsed JSON) per request."""
    context.request_processor = [RequestProcessor({}) for _ in bodies] if len(context.request_processor) != len(
        bodies) else context.request_processor
    context.request_ids = {index: f"req-{index}" for index in range(len(bodies))}
    answers = handler.handle([{"body": body} for body in bodies], context)
    return [(context.get_response_status(index)[0], json.loads(answer)) for index, answer in enumerate(answers)]


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray((array * 255).astype(np.uint8))
    picture.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def champion(model_files: dict[str, Path], tmp_path: Path):
    return loaded(ChampionHandler, model_files["champion"], tmp_path, "champion")


def test_champion_answers_npy_json_and_png(champion, random_images) -> None:
    handler, context = champion
    images = random_images(3, 1)
    answers = run(handler, context, [encode_batch(images), {"image": images[0].tolist()},
                                     {"images": images.tolist()}, png(np.zeros((20, 30)))])
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert [len(body) for _, body in answers] == [3, 1, 3, 1]
    assert set(answers[0][1][0]) == {"label", "class_name", "confidence"}
    assert answers[1][1][0] == answers[0][1][0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        ({"image": np.zeros((5, 5)).tolist()}, "wrong image size 5x5: this model takes 8x8"),
        ({"image": np.zeros((8, 8, 3)).tolist()}, "got shape (1, 8, 8, 3): an extra channel axis"),
        (encode_batch(np.zeros((2, 8, 8, 3), dtype=np.float32)), "got shape (2, 8, 8, 3)"),
        ({"image": [[float("nan")] * 8] * 8}, "NaN or infinite"),
        ({"image": [[2.0] * 8] * 8}, "pixel values must be in [0, 1], got [2, 2]"),
        ({"images": []}, "empty batch"),
        (encode_batch(np.zeros((0, 8, 8), dtype=np.float32)), "empty batch"),
        (encode_batch(np.zeros((5, 8, 8), dtype=np.float32)), "too many images: 5 in one request, at most 4"),
        ({"pixels": []}, 'expected a JSON object with one key "image"'),
        ({"image": [[0.0, 0.1], [0.2]]}, '"image" must be nested lists of numbers of one shape'),
        (b"\x89PNG\r\n\x1a\ngarbage", "unreadable PNG/JPEG"),
    ],
)
def test_champion_refuses_bad_input_with_400(champion, body: object, message: str) -> None:
    handler, context = champion
    good = encode_batch(np.zeros((1, 8, 8), dtype=np.float32))
    (status, answer), (good_status, _) = run(handler, context, [body, good])
    assert status == 400
    assert message in answer["error"]
    assert good_status == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # Each claims far more than it carries; the answer comes from the header, before decoding.
        (png_claiming(1001, 1000), 413, "image too large: 1001x1000 is 1,001,000 pixels, at most 1,000,000"),
        (jpeg_claiming(12000, 12000), 413, "image too large: 12000x12000 is 144,000,000 pixels"),
        (png_claiming(30000, 30000), 413, "image too large: Image size (900000000 pixels) exceeds limit"),
        (npy_claiming((100_000, 100_000, 100_000)), 400, "claims shape (100000, 100000, 100000) of float32"),
        (b" " * 65537, 413, "JSON body too large: 65,537 bytes, at most 65,536 (max_json_bytes)"),
        (deep_json(10_000), 400, "JSON nested 10000 levels deep, at most 6"),
        (long_number_json(5000), 400, "JSON number with 5,000 digits in a row, at most 40"),
    ],
    ids=["png-1001x1000", "jpeg-12000x12000", "png-30000x30000", "npy-4PB", "json-64KiB", "json-deep", "json-digits"],
)
def test_champion_refuses_hostile_bodies_with_4xx(champion, body: bytes, status: int, message: str) -> None:
    handler, context = champion
    good = encode_batch(np.zeros((1, 8, 8), dtype=np.float32))
    (refused, answer), (good_status, _) = run(handler, context, [body, good])
    assert (refused, good_status, message in answer["error"]) == (status, 200, True), answer


def test_a_picture_within_the_limit_is_answered(champion) -> None:
    handler, context = champion
    [(status, answer)] = run(handler, context, [png(np.zeros((1000, 1000)))])
    assert status == 200 and len(answer) == 1


@pytest.mark.parametrize("request_id", ["x" * 6000, "part 7", "part-7\nforged: yes", "", "<!channel>"])
def test_a_malformed_request_id_is_refused_and_not_logged(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_images, request_id: str
) -> None:
    monkeypatch.setenv("CTLOOP_STORE_DIR", str(tmp_path / "store"))
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion",
                              headers=[{"X-Ctloop-Request-ID": request_id}, {"X-Ctloop-Request-ID": "line-2:part-0042"}])
    (status, answer), (good_status, _) = run(handler, context, [encode_batch(random_images(1, 5))] * 2)
    assert (status, good_status) == (400, 200)
    assert "X-Ctloop-Request-ID must be 1-128 characters of A-Z a-z 0-9 . _ : -" in answer["error"]
    assert len(answer["error"]) < 200
    records = store.read_store(tmp_path / "store").records
    assert [(record["request_id"], record["server_id"]) for record in records] == [("line-2:part-0042", "req-1")]


def test_the_slice_header_is_checked_and_recorded(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_images
) -> None:
    monkeypatch.setenv("CTLOOP_STORE_DIR", str(tmp_path / "store"))
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion",
                              headers=[{"X-Ctloop-Slice": "line 2"}, {"X-Ctloop-Slice": "camera-2"}, {}])
    answers = run(handler, context, [encode_batch(random_images(1, 6))] * 3)
    assert [status for status, _ in answers] == [400, 200, 200]
    assert answers[0][1]["error"].startswith("X-Ctloop-Slice must be 1-128 characters")
    assert [record["slice"] for record in store.read_store(tmp_path / "store").records] == ["camera-2", ""]


def test_a_model_file_replaced_inside_the_archive_does_not_load(model_files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(model_files["champion"].read_bytes())
    built_with = hashlib.sha256(model_files["champion"].read_bytes()).hexdigest()
    context = make_context(tmp_path, "champion")
    context.model_yaml_config["model_sha256"] = built_with
    ChampionHandler().initialize(context)  # the file the archive was built with loads
    (tmp_path / "model.pt").write_bytes(model_files["b1"].read_bytes())  # swapped: TorchScript is code
    with pytest.raises(RuntimeError, match=f"sha256 \\w{{16}} is not the {built_with[:16]} this archive was built with"):
        ChampionHandler().initialize(context)


def test_serving_limits_come_from_the_environment_first(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTLOOP_MAX_IMAGE_PIXELS", "100")
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion")
    [(status, answer)] = run(handler, context, [png(np.zeros((11, 10)))])
    assert status == 413 and "at most 100 (max_image_pixels)" in answer["error"]
    monkeypatch.setenv("CTLOOP_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="max_image_pixels must be a positive integer, got 'lots'"):
        loaded(ChampionHandler, model_files["champion"], tmp_path, "champion")


def test_branch_and_eval_take_npy_only(model_files: dict[str, Path], tmp_path: Path, random_images) -> None:
    images = random_images(4, 2)
    branch, context = loaded(BranchHandler, model_files["b1"], tmp_path, "b1")
    [(status, answer)] = run(branch, context, [encode_batch(images)])
    assert status == 200 and len(answer["labels"]) == len(answer["confidences"]) == 4
    [(status, answer)] = run(branch, context, [{"image": images[0].tolist()}])
    assert status == 400 and "expected a .npy batch" in answer["error"]
    evaluator, context = loaded(EvalHandler, model_files["b2"], tmp_path, "eval")
    [(status, answer)] = run(evaluator, context, [encode_batch(images)])
    assert status == 200 and np.allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-5)


def test_champion_logs_predictions_but_not_canaries(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_images
) -> None:
    monkeypatch.setenv("CTLOOP_STORE_DIR", str(tmp_path / "store"))
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion",
                              headers=[{}, {"x-ctloop-canary": "1"}])
    images = random_images(2, 3)
    run(handler, context, [encode_batch(images), encode_batch(images)])
    records = store.read_store(tmp_path / "store").records
    assert [(record["request_id"], record["item"], record["model_version"]) for record in records] == [
        ("req-0", 0, "7"), ("req-0", 1, "7")]
    assert np.array_equal(store.load_samples(tmp_path / "store", [r["sample"] for r in records]), images)
    # The card's ATC threshold rides along, so the monitor can estimate accuracy from the log.
    threshold = load_model(model_files["champion"])[1].atc_threshold
    assert threshold is not None and [record["atc_threshold"] for record in records] == [threshold, threshold]


def test_store_reports_a_truncated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "segment.jsonl"
    log.write_text('{"label": 1}\n{"label": 2}\n{"lab')
    records = store.read_prediction_log(log)
    assert records == [{"label": 1}, {"label": 2}] and records.truncated_tail
    log.write_text('{"label": 1}\n{"lab\n{"label": 3}\n')
    records = store.read_prediction_log(log)
    assert records == [{"label": 1}, {"label": 3}] and records.broken_lines == [2] and not records.truncated_tail


def test_the_handlers_records_pass_the_readers_schema_check(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_images
) -> None:
    monkeypatch.setenv("CTLOOP_STORE_DIR", str(tmp_path / "store"))
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion")
    run(handler, context, [encode_batch(random_images(3, 9))])
    found = store.read_store(tmp_path / "store")  # checks every record
    assert len(found.records) == 3 and not found.cut_short and not found.broken
    assert all(wire.record_problem(record) is None for record in found.records)
    assert store.load_samples(tmp_path / "store", [r["sample"] for r in found.records]).shape == (3, 8, 8)


def test_a_dead_writers_fragment_stays_in_its_own_segment(
    model_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_images
) -> None:
    dead = tmp_path / "store" / wire.segment_log(wire.segment_stem(1, "champion", "7", "dead-worker"))
    dead.parent.mkdir(parents=True)
    dead.write_text('{"request_id": "dead-worker", "ti')
    monkeypatch.setenv("CTLOOP_STORE_DIR", str(tmp_path / "store"))
    handler, context = loaded(ChampionHandler, model_files["champion"], tmp_path, "champion")
    run(handler, context, [encode_batch(random_images(2, 4))])
    found = store.read_store(tmp_path / "store")
    assert [record["item"] for record in found.records] == [0, 1]
    assert found.cut_short == [dead.name] and not found.broken
    assert dead.read_text() == '{"request_id": "dead-worker", "ti'  # no one else appends to a segment
