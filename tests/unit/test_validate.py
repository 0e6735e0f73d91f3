"""validate: every check, its figures in the report, and the error that stops the run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ctloop.collected import CollectedSet
from components.validate.logic import ValidationError, validate_collected

CLASSES = ("0", "1", "2")


def collected(new: int = 6, previous: int = 6, size: tuple[int, ...] = (8, 8), **changes) -> CollectedSet:
    """New rows first (unlabelled, distinct request ids), then previous rows (labels 0, 1, 2, ...)."""
    rng = np.random.default_rng(0)
    fields = dict(
        images=rng.random((new + previous, *size), dtype=np.float32),
        labels=np.array([-1] * new + [i % 3 for i in range(previous)], dtype=np.int64),
        is_new=np.array([True] * new + [False] * previous),
        server_ids=np.array([f"req-{i}" for i in range(new)] + [""] * previous),
        items=np.array([0] * new + [-1] * previous, dtype=np.int64),
        class_names=CLASSES,
    )
    fields.update(changes)
    return CollectedSet(**fields)


def run(tmp_path: Path, data: CollectedSet | None, min_samples: int = 5):
    path = tmp_path / "collected.npz"
    if data is not None:
        data.save(path)
    return validate_collected(path, (8, 8), 3, min_samples, tmp_path / "report.md")


def failing(tmp_path: Path, data: CollectedSet | None, message: str, **kwargs) -> str:
    """Run, expect a ValidationError containing `message`; return the report written."""
    with pytest.raises(ValidationError, match=re.escape(message)) as caught:
        run(tmp_path, data, **kwargs)
    assert str(caught.value).startswith(f"{tmp_path / 'collected.npz'}: validation failed - ")
    assert str(caught.value).endswith(f"(report: {tmp_path / 'report.md'})")
    return (tmp_path / "report.md").read_text()


def test_a_good_merged_set_passes_and_is_reported(tmp_path):
    report = run(tmp_path, collected())
    assert report.ok and (report.new_samples, report.previous_samples) == (6, 6)
    assert {check.status for check in report.checks} == {"pass"}
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Validation of `collected.npz`: passed\n")
    assert "| Check | Result | Figures |" in text
    assert "| image shape | pass | 12 images of 8x8, expected 8x8 |" in text
    assert "| new samples | pass | 6 new samples, at least 5 needed |" in text
    assert "| class coverage | pass | 3 of 3 classes among 6 previous samples |" in text
    assert report.to_dict()["checks"][0] == {"name": "readable file", "status": "pass", "figures": "12 samples"}


def test_window_only_set_skips_class_coverage(tmp_path):
    report = run(tmp_path, collected(previous=0))
    assert report.ok
    assert [c.status for c in report.checks if c.name == "class coverage"] == ["n/a"]


def test_nan_images_fail(tmp_path):
    data = collected()
    data.images[2, 3, 3] = np.nan
    data.images[7, 0, 0] = np.inf
    text = failing(tmp_path, data, "finite values: 2 images with NaN or infinite values (rows [2, 7])")
    assert "| finite values | fail | 2 images with NaN or infinite values (rows [2, 7]) |" in text
    assert "`collected.npz`: FAILED" in text


def test_values_out_of_range_fail(tmp_path):
    data = collected()
    data.images[1] *= 255
    failing(tmp_path, data, "value range: 1 images with pixels outside [0, 1], values in [")


def test_wrong_image_size_fails(tmp_path):
    failing(tmp_path, collected(size=(6, 6)), "image shape: 12 images of 6x6, expected 8x8")


def test_colour_images_fail(tmp_path):
    failing(tmp_path, collected(size=(8, 8, 3)), "image shape: array of shape (12, 8, 8, 3), expected (N, 8, 8)")


def test_wrong_dtype_fails(tmp_path):
    data = collected()
    failing(tmp_path, collected(images=data.images.astype(np.float64)), "dtype: float64, expected float32")


def test_labels_out_of_range_fail(tmp_path):
    labels = np.array([-1, 3, -1, -1, -1, -1, 0, 1, 2, -1, 0, 7], dtype=np.int64)
    failing(tmp_path, collected(labels=labels),
            "label ids: 4 labelled (0 new), 5 new unlabelled, 3 out of [0, 2] (ids [-1, 3, 7])")


def test_labelled_new_rows_are_fine(tmp_path):
    labels = np.array([2, -1, 1, -1, -1, -1, 0, 1, 2, 0, 1, 2], dtype=np.int64)
    report = run(tmp_path, collected(labels=labels))
    assert "8 labelled (2 new), 4 new unlabelled, 0 out of [0, 2]" in [c.figures for c in report.checks][6]


def test_too_few_new_samples_fail(tmp_path):
    failing(tmp_path, collected(new=3), "new samples: 3 new samples, at least 5 needed")


def test_empty_window_fails(tmp_path):
    failing(tmp_path, collected(new=0, previous=0), "image shape: no images at all, expected (N, 8, 8)")


def test_a_record_logged_twice_fails(tmp_path):
    ids = np.array(["a", "b", "a", "c", "d", "e"] + [""] * 6)
    failing(tmp_path, collected(server_ids=ids), "duplicate records: 1 new samples repeat a record already in "
            "the window (e.g. TorchServe request 'a' item 0, 2 times)")


def test_items_of_one_batch_request_are_not_duplicates(tmp_path):
    ids = np.array(["batch"] * 6 + [""] * 6)
    items = np.array([0, 1, 2, 3, 4, 5] + [-1] * 6)
    assert run(tmp_path, collected(server_ids=ids, items=items)).ok


def test_identical_pixels_are_a_warning(tmp_path):
    data = collected()
    data.images[1] = data.images[0]
    data.images[2] = data.images[0]
    data.images[3] = data.images[8]  # equal to a previous sample: kept, counted
    report = run(tmp_path, data)
    assert report.ok
    assert [(c.name, c.status, c.figures) for c in report.warnings] == [
        ("identical images", "warn",
         "2 new samples repeat another new sample's pixels, 1 equal a previous training sample (all kept)"),
    ]
    assert "| identical images | warn |" in (tmp_path / "report.md").read_text()


def test_merged_set_missing_a_class_fails(tmp_path):
    labels = np.array([-1] * 6 + [0] * 6, dtype=np.int64)  # previous set of one class
    failing(tmp_path, collected(labels=labels),
            "class coverage: 1 of 3 classes among 6 previous samples, missing class ids [1, 2]")


def test_class_names_must_match(tmp_path):
    failing(tmp_path, collected(class_names=("0", "1")), "class names: 2 names, expected 3")


def test_every_failure_is_named(tmp_path):
    data = collected(new=2, size=(6, 6))
    data.images[0, 0, 0] = np.nan
    with pytest.raises(ValidationError) as caught:
        run(tmp_path, data)
    for name in ("image shape", "finite values", "new samples"):
        assert f"{name}: " in str(caught.value)


def test_missing_file_fails_with_a_report(tmp_path):
    text = failing(tmp_path, None, f"readable file: {tmp_path / 'collected.npz'}: no such collected set")
    assert "| readable file | fail |" in text


def test_unreadable_file_fails_with_a_report(tmp_path):
    (tmp_path / "collected.npz").write_bytes(b"\x00garbage")
    failing(tmp_path, None, "readable file: ")
    assert "not a readable collected set" in (tmp_path / "report.md").read_text()


def test_truncated_file_fails_with_a_report(tmp_path):
    collected().save(tmp_path / "whole.npz")
    whole = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "collected.npz").write_bytes(whole[: len(whole) // 2])
    failing(tmp_path, None, "readable file: ")
    assert "not a readable collected set" in (tmp_path / "report.md").read_text()
