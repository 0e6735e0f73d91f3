"""The image-set convention, the wire codec and the pipeline config file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctloop.config import ConfigError, PipelineConfig, load_config
from ctloop.images import ImageDataError, ImageSet, write_atomic
from ctloop.wire import WireError, decode_batch, encode_batch

NAMES = ("a", "b", "c")


def test_image_set_round_trips_through_npz(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((5, 4, 6), dtype=np.float32)
    original = ImageSet(images, np.array([0, 1, 2, 1, 0]), NAMES)
    original.save(tmp_path / "set.npz")
    loaded = ImageSet.load(tmp_path / "set.npz")
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, original.labels)
    assert loaded.class_names == NAMES and loaded.image_size == (4, 6)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), [0, 1], r"expected images of shape \(N, H, W\)"),
        (np.zeros((2, 4, 4), np.float64), [0, 1], "expected float32 images, got float64"),
        (np.full((2, 4, 4), np.nan, np.float32), [0, 1], "NaN or infinite"),
        (np.full((2, 4, 4), 2.0, np.float32), [0, 1], r"must be in \[0, 1\]"),
        (np.zeros((2, 4, 4), np.float32), [0, 3], r"label ids must be in \[0, 2\]"),
        (np.zeros((2, 4, 4), np.float32), [0], "2 images but labels of shape"),
    ],
)
def test_image_set_rejects_hostile_data(images, labels, message) -> None:
    with pytest.raises(ImageDataError, match=message):
        ImageSet(images, np.asarray(labels), NAMES)


def test_loading_a_non_npz_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(ImageDataError, match="broken.npz: not a readable ctloop image set"):
        ImageSet.load(path)


def test_batch_codec_round_trips_and_refuses_pickles() -> None:
    images = np.random.default_rng(1).random((3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(decode_batch(encode_batch(images)), images)
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WireError, match="unreadable .npy batch .*allow_pickle"):
        decode_batch(buffer.getvalue())


def test_a_batch_header_claiming_more_than_its_body_is_refused_before_allocation() -> None:
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100_000, 100_000, 100_000)})
    with pytest.raises(WireError, match=r"claims shape \(100000, 100000, 100000\) of float32 "
                                        r"\(4,000,000,000,000,000 bytes\), but only 0 bytes follow"):
        decode_batch(header.getvalue())  # 128 bytes; numpy alone would try to allocate 4 PB
    whole = encode_batch(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(WireError, match="512 bytes.*but only 511 bytes follow"):
        decode_batch(whole[:-1])


def test_write_atomic_replaces_whole_files_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    blocker = tmp_path / "taken"
    (blocker / "child").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(blocker, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "taken"]


def test_shipped_config_has_the_reference_defaults() -> None:
    config = load_config()
    assert config.yield_threshold == 0.7
    assert config.yield_drop_tolerance == 0.05 and config.yield_floor == 0.6
    assert config.confidence_threshold == 0.7
    assert config.val_ratio == 0.2 and config.min_improvement == 0.01
    assert config.min_holdout_per_class == 2 and config.evidence_level == 0.05
    assert config.min_pseudo_label_precision == 0.9 and config.min_audited_parts == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recent_window: many\n", "recent_window must be of type int, got 'many'"),
        ("val_ratio: 1.5\n", r"val_ratio must be in \[0.0, 0.9\], got 1.5"),
        ("min_samples: 0\n", "min_samples must be at least 1"),
        ("min_holdout_per_class: -1\n", "min_holdout_per_class must be at least 0, got -1"),
        ("min_holdout_per_class: 2.5\n", "min_holdout_per_class must be of type int, got 2.5"),
        ("evidence_level: 0\n", r"evidence_level must be in \(0.0, 1.0\], got 0"),
        ("evidence_level: 1.5\n", r"evidence_level must be in \(0.0, 1.0\], got 1.5"),
        ("min_pseudo_label_precision: 1.2\n", r"min_pseudo_label_precision must be in \[0.0, 1.0\], got 1.2"),
        ("min_pseudo_label_precision: high\n", "min_pseudo_label_precision must be of type float, got 'high'"),
        ("min_audited_parts: 0\n", "min_audited_parts must be at least 1, got 0"),
        ("min_audited_parts: 20.5\n", "min_audited_parts must be of type int, got 20.5"),
        ("yield_mode: ok_share\n", "yield_mode must be one of confidence, pass_rate, estimated_accuracy, accuracy"),
        ("yield_mode: pass_rate\n", "yield_mode pass_rate needs ok_class: the class name that means a good part"),
        ("merge_previous: 3\n", "merge_previous must be of type bool"),
        ("yield_treshold: 0.7\n", "unknown config keys: yield_treshold"),
        ("- a list\n", "expected a mapping"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_config_values_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ctloop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_yield_threshold_may_be_unset_for_the_baseline_rule() -> None:
    assert PipelineConfig(yield_threshold=None).yield_threshold is None


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_loading_a_truncated_npz_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    ImageSet(np.zeros((50, 8, 8), np.float32), np.zeros(50, np.int64), NAMES).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImageDataError, match="cut.npz: not a readable ctloop image set"):
        ImageSet.load(path)
