"""The machined-parts line: seeded, in the image convention, split like the digits, and its
defects small, local and present in every defective image."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import ctloop.parts
from ctloop.imagefolder import read_image_folder, write_image_folder
from ctloop.parts import OK_CLASS, PART_CLASSES, parts_images, parts_split, with_ok_share
from ctloop.simulator import DigitsSplit

PER_CLASS = 40


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return parts_split(seed=0, per_class=PER_CLASS)


def labels_of(n: int) -> np.ndarray:
    return np.arange(n) % len(PART_CLASSES)


def test_public_names() -> None:
    assert sorted(ctloop.parts.__all__) == ["OK_CLASS", "PART_CLASSES", "parts_images", "parts_split", "with_ok_share"]
    assert PART_CLASSES[0] == OK_CLASS == "ok" and 4 <= len(PART_CLASSES) <= 5


def test_a_line_mix_keeps_every_ok_part_and_as_many_of_each_defect(split: DigitsSplit) -> None:
    pool = split.production  # 12 parts of each class
    mixed = with_ok_share(pool, 0.5, seed=0)
    assert np.bincount(mixed.labels).tolist() == [12, 3, 3, 3, 3]
    assert mixed.class_names == PART_CLASSES
    rows = {image.tobytes() for image in pool.images}
    assert all(image.tobytes() in rows for image in mixed.images)
    assert not np.array_equal(mixed.images, with_ok_share(pool, 0.5, seed=1).images)
    assert np.bincount(with_ok_share(pool, 0.85).labels).tolist() == [12, 1, 1, 1, 1]  # at least one of each


@pytest.mark.parametrize("size", [32, 64])
def test_images_follow_the_convention(size: int) -> None:
    images = parts_images(labels_of(20), size, seed=1)
    assert images.shape == (20, size, size) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std(axis=(1, 2)).min() > 0.05  # a part on a belt, not a flat frame


def test_a_large_image_renders() -> None:
    assert parts_images(labels_of(5), 128, seed=0).shape == (5, 128, 128)


def test_the_seed_decides_every_pixel() -> None:
    labels = labels_of(30)
    assert np.array_equal(parts_images(labels, 32, seed=4), parts_images(labels, 32, seed=4))
    assert not np.array_equal(parts_images(labels, 32, seed=4), parts_images(labels, 32, seed=5))


def test_parts_vary_within_a_class() -> None:
    ok = parts_images(np.zeros(50, np.int64), 32, seed=2)
    assert len({image.tobytes() for image in ok}) == 50
    assert np.ptp(ok.mean(axis=(1, 2))) > 0.1  # brightness alone cannot tell the classes apart


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("defect", range(1, len(PART_CLASSES)))
def test_a_defect_is_small_local_and_always_there(size: int, defect: int) -> None:
    """The same seed gives the same parts whatever the labels, so the difference is the defect."""
    ok = parts_images(np.zeros(100, np.int64), size, seed=3)
    defective = parts_images(np.full(100, defect), size, seed=3)
    difference = np.abs(defective - ok).reshape(100, -1)
    changed = (difference > 0.02).sum(axis=1)
    assert changed.min() >= 3, PART_CLASSES[defect]
    assert changed.max() <= 0.07 * size * size, PART_CLASSES[defect]
    assert difference.max(axis=1).min() > 0.15, PART_CLASSES[defect]


def test_split_is_stratified_50_20_30(split: DigitsSplit) -> None:
    expected = {"train": PER_CLASS // 2, "golden": PER_CLASS // 5, "production": PER_CLASS * 3 // 10}
    for name, count in expected.items():
        part = getattr(split, name)
        assert part.class_names == PART_CLASSES
        assert np.bincount(part.labels, minlength=len(PART_CLASSES)).tolist() == [count] * len(PART_CLASSES)


def test_split_parts_are_disjoint(split: DigitsSplit) -> None:
    rows = [{image.tobytes() for image in part.images} for part in (split.train, split.golden, split.production)]
    assert sum(len(part) for part in rows) == len(set().union(*rows)) == PER_CLASS * len(PART_CLASSES)


def test_split_depends_on_the_seed(split: DigitsSplit) -> None:
    again = parts_split(seed=0, per_class=PER_CLASS)
    assert np.array_equal(again.golden.images, split.golden.images)
    assert np.array_equal(again.golden.labels, split.golden.labels)
    assert not np.array_equal(parts_split(seed=1, per_class=PER_CLASS).golden.images, split.golden.images)


def test_three_thousand_images_render_in_well_under_five_seconds() -> None:
    start = time.perf_counter()
    parts_images(labels_of(3000), 32, seed=0)
    assert time.perf_counter() - start < 5.0


def test_the_line_round_trips_through_an_image_folder(split: DigitsSplit, tmp_path: Path) -> None:
    write_image_folder(split.golden, tmp_path / "golden")
    read = read_image_folder(tmp_path / "golden", (32, 32), PART_CLASSES)
    assert sorted(path.name for path in (tmp_path / "golden").iterdir()) == sorted(PART_CLASSES)
    assert np.array_equal(np.sort(read.labels), np.sort(split.golden.labels))
    assert read.images.shape == split.golden.images.shape


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parts_images(np.array([0, 5]), 32), "labels must be a 1-d array of class ids in [0, 4]"),
        (lambda: parts_images(np.array([0, 1]), 8), "image_size must be an integer >= 16 pixels, got 8"),
        (lambda: parts_split(per_class=9), "per_class must be an integer >= 10 (each part needs each class), got 9"),
        (lambda: with_ok_share(parts_split(per_class=10).production, 1.0), "ok_share must be in (0, 1), got 1.0"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
