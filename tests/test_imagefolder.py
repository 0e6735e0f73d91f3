"""Reading a user's ImageFolder: formats, resizing and clear errors naming the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctloop.imagefolder import read_image_folder, write_image_folder
from ctloop.images import ImageDataError, ImageSet
from ctloop.simulator import digits_split


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, ImageSet]:
    images = digits_split(0).golden.subset(np.arange(40))
    write_image_folder(images, tmp_path / "parts")
    return tmp_path / "parts", images


def test_round_trip_keeps_pixels_and_labels(folder) -> None:
    root, original = folder
    loaded = read_image_folder(root, (8, 8))
    order = np.argsort(original.labels, kind="stable")
    assert loaded.class_names == tuple(sorted(set(original.class_names[label] for label in original.labels)))
    names = [loaded.class_names[label] for label in loaded.labels]
    assert names == [original.class_names[label] for label in original.labels[order]]
    np.testing.assert_allclose(loaded.images, original.images[order], atol=1 / 255 + 1e-6)


def test_rgb_png_and_jpeg_of_any_size_become_grey_model_input(tmp_path: Path) -> None:
    for name, mode, suffix in (("a", "RGB", "png"), ("b", "RGBA", "png"), ("c", "RGB", "jpg"), ("d", "P", "png")):
        (tmp_path / name).mkdir()
        picture = Image.new(mode, (64, 48), color=(255, 255, 255) if mode == "RGB" else None)
        picture.save(tmp_path / name / f"part.{suffix}")
    loaded = read_image_folder(tmp_path, (8, 8))
    assert loaded.images.shape == (4, 8, 8) and loaded.images.dtype == np.float32
    assert loaded.images[0].min() > 0.99


def test_model_classes_fix_the_label_ids(folder) -> None:
    root, _ = folder
    classes = tuple(str(digit) for digit in range(10)) + ("scratch",)
    loaded = read_image_folder(root, (8, 8), class_names=classes)
    assert loaded.class_names == classes


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "not a directory"),
        (lambda root: root.mkdir(), "no class sub-folders"),
        (lambda root: (root / "ok").mkdir(parents=True), "only one class folder"),
        (lambda root: [(root / name).mkdir(parents=True) for name in ("a", "b")], "a: empty class folder"),
    ],
)
def test_bad_folders_name_the_path(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "line"
    make(root)
    with pytest.raises(ImageDataError, match=message) as caught:
        read_image_folder(root, (8, 8))
    assert str(root) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "not a PNG or JPEG file"),
        ("fake.png", b"this is text", "unreadable image"),
        ("cut.png", None, "unreadable image"),
    ],
)
def test_bad_files_name_the_file(folder, name: str, content: bytes | None, message: str) -> None:
    root, _ = folder
    target = root / "3" / name
    if content is None:
        good = next((root / "3").iterdir()).read_bytes()
        content = good[: len(good) // 2]
    target.write_bytes(content)
    with pytest.raises(ImageDataError, match=message) as caught:
        read_image_folder(root, (8, 8))
    assert str(target) in str(caught.value)


def test_a_folder_outside_the_model_classes_is_named(folder) -> None:
    root, _ = folder
    with pytest.raises(ImageDataError, match="parts/2: class '2' is not one of the model's classes"):
        read_image_folder(root, (8, 8), class_names=("0", "1"))
