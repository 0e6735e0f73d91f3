"""The champion's prediction log in segments: rotation, retention, failed writes truncated back,
and lost records counted (serving/handlers/prediction_log.py, read by serving/store.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctloop import wire
from serving import store
from serving.archive import HANDLER_DIR

sys.path.insert(0, str(HANDLER_DIR))  # as TorchServe does with an unpacked archive

import prediction_log  # noqa: E402
from prediction_log import PredictionLog, StoreLimits, prune_segments  # noqa: E402

SIZE = (8, 8)


def writer(root: Path, **limits: int) -> PredictionLog:
    return PredictionLog(str(root), "champion", "3", SIZE, 0.8, StoreLimits(**limits))


def send(log: PredictionLog, images: np.ndarray, request_id: str = "part-1") -> None:
    count = len(images)
    log.append(request_id, f"ts-{request_id}", images, [1] * count, ["1"] * count, [0.9] * count)


def stored(root: Path) -> tuple[store.StoreRecords, np.ndarray]:
    found = store.read_store(root)
    return found, store.load_samples(root, [record["sample"] for record in found.records])


def test_segments_rotate_by_size_and_every_record_keeps_its_sample(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((12, *SIZE), dtype=np.float32)
    log = writer(tmp_path, segment_bytes=3 * 256)  # a request rotates once the samples reach 768 bytes
    for start in range(0, 12, 2):
        send(log, images[start:start + 2], f"part-{start}")
    found, samples = stored(tmp_path)
    assert len(store.list_segments(tmp_path)) == 3  # two requests (4 samples, 1,024 bytes) each
    assert np.array_equal(samples, images)
    assert [record["request_id"] for record in found.records][::2] == [f"part-{n}" for n in range(0, 12, 2)]


def test_segments_rotate_by_age(tmp_path: Path) -> None:
    log = writer(tmp_path, segment_seconds=0)  # every request opens a new segment
    for _ in range(3):
        send(log, np.zeros((1, *SIZE), dtype=np.float32))
    segments = store.list_segments(tmp_path)
    assert len(segments) == 3 and {segment.model_version for segment in segments} == {"3"}


def test_a_segment_no_longer_in_the_store_is_left_for_a_new_one_there(tmp_path: Path) -> None:
    """Records after the store's path changes go where the store is now: into the directory a
    re-pointed link leads to, and after the segment's files are deleted, into a new segment."""
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    link = tmp_path / "store"
    first.mkdir()
    link.symlink_to(first)
    log = writer(link)
    images = np.random.default_rng(1).random((3, *SIZE), dtype=np.float32)
    send(log, images[:1], "part-0")
    link.unlink()
    link.symlink_to(second)
    send(log, images[1:2], "part-1")
    assert [record["request_id"] for record in stored(first)[0].records] == ["part-0"]
    found, samples = stored(second)
    assert [record["request_id"] for record in found.records] == ["part-1"] and np.array_equal(samples, images[1:2])
    for path in (second / wire.SEGMENTS_DIR).iterdir():
        path.unlink()
    send(log, images[2:], "part-2")
    found, samples = stored(second)
    assert [record["request_id"] for record in found.records] == ["part-2"] and np.array_equal(samples, images[2:])


def test_a_failed_write_is_truncated_back_counted_and_reported_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.random.default_rng(1).random((6, *SIZE), dtype=np.float32)
    log = writer(tmp_path)
    send(log, images[:2], "before")
    real_write = prediction_log.write_whole
    calls = []

    def sample_written_then_disk_full(fd: int, data: bytes) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the failed request's samples went in; its lines do not
            raise OSError(28, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(prediction_log, "write_whole", sample_written_then_disk_full)
    send(log, images[2:5], "while-full")  # answered regardless: append never raises
    monkeypatch.setattr(prediction_log, "write_whole", real_write)
    assert log.lost == 3
    send(log, images[5:], "after")
    found, samples = stored(tmp_path)
    assert [record["request_id"] for record in found.records] == ["before", "before", "after"]
    assert np.array_equal(samples, images[[0, 1, 5]])  # the torn samples were cut back, not shifted
    assert found.lost == 3 and log.lost == 0


def test_a_segment_that_cannot_be_truncated_back_is_left_for_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.random.default_rng(2).random((3, *SIZE), dtype=np.float32)
    log = writer(tmp_path)
    send(log, images[:1], "first")

    def failing(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(prediction_log, "write_whole", failing)
    monkeypatch.setattr(prediction_log.os, "ftruncate", failing)
    send(log, images[1:2], "lost")
    monkeypatch.undo()
    send(log, images[2:], "second")
    found, samples = stored(tmp_path)
    assert len(store.list_segments(tmp_path)) == 2
    assert [record["request_id"] for record in found.records] == ["first", "second"]
    assert np.array_equal(samples, images[[0, 2]]) and found.lost == 1


def make_segment(root: Path, start: int, version: str, age_seconds: float, size: int, now: float) -> str:
    stem = wire.segment_stem(start, "champion", version, "w")
    for path in (root / wire.segment_log(stem), root / wire.segment_samples(stem, SIZE)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_seconds, now - age_seconds))
    return stem


def test_retention_deletes_old_segments_then_the_oldest_over_size_never_an_active_one(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    day = 24 * 3600
    too_old = make_segment(tmp_path, 1, "1", 15 * day, 100, now)
    oldest = make_segment(tmp_path, 2, "1", 2 * day, 100, now)
    middle = make_segment(tmp_path, 3, "2", 1 * day, 100, now)
    active = make_segment(tmp_path, 4, "2", 60, 1000, now)
    limits = StoreLimits(segment_seconds=3600, retention_seconds=14 * day, retention_bytes=2300)
    assert prune_segments(tmp_path, limits, now) == [too_old, oldest]  # by age; then 2,400 bytes > 2,300
    assert sorted(path.name.split(".")[0] for path in (tmp_path / wire.SEGMENTS_DIR).iterdir()) == \
        sorted([middle, middle, active, active])
    tight = StoreLimits(segment_seconds=3600, retention_seconds=14 * day, retention_bytes=1)
    assert prune_segments(tmp_path, tight, now) == [middle]  # the active segment stays, over the size or not


def test_the_tail_reader_stops_at_the_window(tmp_path: Path) -> None:
    """read_newest opens only the segments it needs: an old segment that would fail to parse
    is never read when the newer ones hold the window."""
    log = writer(tmp_path, segment_seconds=0)
    old = wire.segment_stem(1, "champion", "3", "old-writer")
    (tmp_path / wire.SEGMENTS_DIR).mkdir()
    (tmp_path / wire.segment_log(old)).write_text('{"broken": \n')
    hours_ago = time.time() - 7200  # written before the newer segments, within the retention
    os.utime(tmp_path / wire.segment_log(old), (hours_ago, hours_ago))
    for n in range(4):
        send(log, np.zeros((1, *SIZE), dtype=np.float32), f"part-{n}")
    newest = store.read_newest(tmp_path, 3, "3")
    assert [record["request_id"] for record in newest.records] == ["part-1", "part-2", "part-3"]
    assert newest.broken == []
    assert store.read_newest(tmp_path, 10, "3").broken == [f"{old}.jsonl:1"]
