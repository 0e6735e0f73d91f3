"""collect: the window's samples from the prediction_store, merged with the previous training set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.collect.logic import cap_per_class, collect_window
from ctloop import wire
from ctloop.collected import CollectedSet
from components.monitor.logic import check_yield
from ctloop.images import ImageDataError, ImageSet

SIZE = (8, 8)  # the store fixture's image size
CLASSES = ("0", "1", "2")


def write_window(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def previous_set(path: Path, count: int = 6, images: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(1)
    if images is None:
        images = rng.random((count, *SIZE), dtype=np.float32)
    ImageSet(images, np.arange(len(images), dtype=np.int64) % len(CLASSES), CLASSES).save(path)
    return path


def test_collects_the_window_samples_unlabelled(prediction_store, tmp_path):
    records = prediction_store.log_many([0.5] * 4)
    window = write_window(tmp_path / "window.jsonl", records)
    summary = collect_window(window, prediction_store.root, tmp_path / "collected.npz", None, CLASSES)
    data = CollectedSet.load(tmp_path / "collected.npz")
    np.testing.assert_array_equal(data.images, np.stack([prediction_store.image(r) for r in records]))
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.labels.tolist() == [-1] * 4 and data.is_new.all()
    assert data.server_ids.tolist() == [r["server_id"] for r in records]
    assert data.items.tolist() == [0] * 4 and data.class_names == CLASSES
    assert summary.to_dict() == {
        "out": str(tmp_path / "collected.npz"), "new_samples": 4, "labelled_new": 0, "previous_samples": 0,
        "total_samples": 4, "previous_dropped": 0, "image_size": [8, 8],
    }


def test_monitor_window_feeds_collect_with_feedback_labels(prediction_store, tmp_path):
    records = prediction_store.log_many([0.5] * 5, version="3")
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps({"request_id": records[1]["request_id"], "label": 2}) + "\n")
    window = tmp_path / "window.jsonl"
    check_yield(prediction_store.root, 5, 0.7, 0.05, 0.6, 0.9, feedback_log=feedback, window_out=window)
    summary = collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)
    assert summary.labelled_new == 1
    assert CollectedSet.load(tmp_path / "c.npz").labels.tolist() == [-1, 2, -1, -1, -1]


def test_the_cap_keeps_each_class_newest_half_and_a_sample_of_its_history() -> None:
    labels = np.array([0] * 10 + [1] * 3 + [0] * 30)  # newest first; class 1 is under the cap
    kept = cap_per_class(labels, 8)
    assert kept.tolist() == sorted(kept.tolist()) and len(set(kept.tolist())) == len(kept)  # order kept
    zeros = [row for row in kept if labels[row] == 0]
    assert len(zeros) == 8 and zeros[:4] == [0, 1, 2, 3]  # the four newest of class 0 ...
    assert all(row >= 4 for row in zeros[4:])  # ... and four of its 36 older rows
    assert [row for row in kept if labels[row] == 1] == [10, 11, 12]
    assert cap_per_class(labels, 8).tolist() == kept.tolist()  # seeded: the same rows every time
    # The older half reaches back through the whole history, not only the next-newest rows.
    reach = [max(cap_per_class(labels, 8, seed)) for seed in range(20)]
    assert max(reach) > 30


def test_a_capped_merge_drops_only_previous_rows_and_says_how_many(prediction_store, tmp_path):
    old = previous_set(tmp_path / "previous.npz")  # 6 rows, 2 per class
    window = write_window(tmp_path / "window.jsonl", [prediction_store.log(0.5) for _ in range(4)])
    summary = collect_window(window, prediction_store.root, tmp_path / "c.npz", old, CLASSES, previous_per_class=1)
    data = CollectedSet.load(tmp_path / "c.npz")
    assert (summary.new_samples, summary.previous_samples, summary.previous_dropped) == (4, 3, 3)
    assert summary.to_dict()["previous_dropped"] == 3
    assert data.is_new.tolist() == [True] * 4 + [False] * 3 and sorted(data.labels[4:].tolist()) == [0, 1, 2]


def test_merge_keeps_every_new_sample_even_identical_to_previous_ones(prediction_store, tmp_path):
    old = previous_set(tmp_path / "previous.npz")
    old_images = ImageSet.load(old).images
    records = [prediction_store.log(0.5, image=old_images[0]), prediction_store.log(0.5, image=old_images[0]), prediction_store.log(0.5)]
    window = write_window(tmp_path / "window.jsonl", records)
    summary = collect_window(window, prediction_store.root, tmp_path / "c.npz", old, CLASSES)
    data = CollectedSet.load(tmp_path / "c.npz")
    assert (summary.new_samples, summary.previous_samples, len(data)) == (3, 6, 9)
    assert data.is_new.tolist() == [True] * 3 + [False] * 6
    np.testing.assert_array_equal(data.images[:2], old_images[[0, 0]])
    np.testing.assert_array_equal(data.images[3:], old_images)
    assert data.labels.tolist() == [-1, -1, -1, 0, 1, 2, 0, 1, 2]
    assert data.server_ids.tolist()[3:] == [""] * 6 and data.items.tolist()[3:] == [-1] * 6


def test_records_of_a_batch_request_keep_their_items(prediction_store, tmp_path):
    records = [prediction_store.log(0.5, request_id="batch", server_id="ts-1", item=i) for i in range(3)]
    window = write_window(tmp_path / "window.jsonl", records)
    collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)
    data = CollectedSet.load(tmp_path / "c.npz")
    assert data.server_ids.tolist() == ["ts-1"] * 3 and data.items.tolist() == [0, 1, 2]


def test_a_client_id_used_twice_keeps_both_records_apart(prediction_store, tmp_path):
    """Records are keyed by TorchServe's id: a client repeating its id cannot make validate refuse the window."""
    records = [prediction_store.log(0.5, request_id="part-7") for _ in range(2)]
    window = write_window(tmp_path / "window.jsonl", records)
    collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)
    data = CollectedSet.load(tmp_path / "c.npz")
    assert len(set(data.server_ids.tolist())) == 2 and data.items.tolist() == [0, 0]


def test_missing_sample_file_names_the_ref(prediction_store, tmp_path):
    records = prediction_store.log_many([0.5] * 2)
    records[1] = {**records[1], "sample": "segments/gone.8x8.f32#0"}
    window = write_window(tmp_path / "window.jsonl", records)
    with pytest.raises(ImageDataError, match=rf"^sample 'segments/gone.8x8.f32#0': {prediction_store.root}/segments/gone.8x8.f32 "
                                             "does not exist$"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)
    assert not (tmp_path / "c.npz").exists()


SHARD = wire.segment_samples(wire.segment_stem(1_700_000_000 * 10**9 + 1, "champion", "1", "test-1"), (8, 8))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("../etc/passwd", "bad sample reference '../etc/passwd'; expected segments/<stem>.<H>x<W>.f32#<index>"),
        (f"{SHARD}#x", f"bad sample reference '{SHARD}#x'"),
        (f"{SHARD}#99", f"sample '{SHARD}#99' is beyond the end"),
    ],
)
def test_bad_refs_name_the_ref(prediction_store, tmp_path, ref, message):
    records = prediction_store.log_many([0.5] * 2)
    records[0] = {**records[0], "sample": ref}
    window = write_window(tmp_path / "window.jsonl", records)
    with pytest.raises(ImageDataError, match=f"^{prediction_store.root}: {message}".replace("[", r"\[").replace(".", r"\.")):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)


def test_empty_window_is_an_error(prediction_store, tmp_path):
    window = write_window(tmp_path / "window.jsonl", [])
    with pytest.raises(ImageDataError, match=f"^{window}: the window holds no predictions; nothing to collect$"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)


def test_feedback_label_out_of_range_names_the_request(prediction_store, tmp_path):
    records = prediction_store.log_many([0.5] * 2)
    records[1] = {**records[1], "feedback_label": 7}
    window = write_window(tmp_path / "window.jsonl", records)
    with pytest.raises(ImageDataError, match=r"request 'req-2' has feedback_label 7; expected a class id in \[0, 2\]"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)


def test_previous_set_with_other_classes_is_an_error(prediction_store, tmp_path):
    old = tmp_path / "previous.npz"
    ImageSet(np.zeros((2, *SIZE), np.float32), np.array([0, 1]), ("a", "b")).save(old)
    window = write_window(tmp_path / "window.jsonl", prediction_store.log_many([0.5]))
    with pytest.raises(ImageDataError, match=r"previous training set has classes \['a', 'b'\], the champion has "
                                             r"\['0', '1', '2'\]"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", old, CLASSES)


def test_previous_set_of_another_image_size_is_an_error(prediction_store, tmp_path):
    old = previous_set(tmp_path / "previous.npz", images=np.zeros((3, 4, 4), np.float32))
    window = write_window(tmp_path / "window.jsonl", prediction_store.log_many([0.5]))
    with pytest.raises(ImageDataError, match=f"^{old}: previous training images are 4x4, the window's samples are 8x8$"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", old, CLASSES)


def test_missing_previous_set_names_the_file(prediction_store, tmp_path):
    window = write_window(tmp_path / "window.jsonl", prediction_store.log_many([0.5]))
    with pytest.raises(ImageDataError, match=f"^{tmp_path}/nope.npz: no such ctloop image set$"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", tmp_path / "nope.npz", CLASSES)


def test_cut_short_window_file_is_an_error(prediction_store, tmp_path):
    window = write_window(tmp_path / "window.jsonl", prediction_store.log_many([0.5]))
    with open(window, "a") as handle:
        handle.write('{"request_id": "x", "sam')
    with pytest.raises(ImageDataError, match=f"^{window}: the last record is cut short; rerun the monitor stage$"):
        collect_window(window, prediction_store.root, tmp_path / "c.npz", None, CLASSES)


def test_collected_set_round_trip_without_pickle(tmp_path):
    data = CollectedSet(
        images=np.zeros((2, 3, 3), np.float32), labels=np.array([-1, 1]), is_new=np.array([True, False]),
        server_ids=np.array(["r1", ""]), items=np.array([0, -1]), class_names=("x", "y"),
    )
    data.save(tmp_path / "set.npz")
    back = CollectedSet.load(tmp_path / "set.npz")
    assert back.server_ids.tolist() == ["r1", ""] and back.class_names == ("x", "y")
    assert back.is_new.dtype == bool and back.labels.tolist() == [-1, 1]
    with np.load(tmp_path / "set.npz", allow_pickle=False) as raw:
        assert all(raw[key].dtype != object for key in raw.files)


def test_collected_set_rejects_misaligned_arrays():
    with pytest.raises(ImageDataError, match=r"^CollectedSet: 2 images but labels of shape \(3,\)$"):
        CollectedSet(np.zeros((2, 3, 3), np.float32), np.zeros(3, np.int64), np.ones(2, bool),
                     np.array(["a", "b"]), np.zeros(2, np.int64), ("x",))


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such collected set"), (b"not a zip", "not a readable collected set")],
)
def test_collected_set_load_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "set.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageDataError, match=f"^{path}: {message}"):
        CollectedSet.load(path)


def test_collected_set_load_of_an_image_set_names_missing_keys(tmp_path):
    path = previous_set(tmp_path / "imageset.npz")
    with pytest.raises(ImageDataError, match=f"^{path}: not a collected set, it lacks is_new, server_ids, items$"):
        CollectedSet.load(path)


def test_the_stage_outputs_are_the_counts_and_the_champions_shape(tmp_path):
    from components.collect.logic import CollectResult, CollectSummary

    summary = CollectSummary(out=tmp_path / "c.npz", new_samples=4, labelled_new=1, previous_samples=6,
                             image_size=(8, 8))
    result = CollectResult(summary, champion_version="3", image_size=(28, 32), num_classes=10)
    assert result.outputs() == {"new_samples": 4, "total_samples": 10, "image_height": 28, "image_width": 32,
                                "num_classes": 10}
