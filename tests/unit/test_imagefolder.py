"""Reading a user's ImageFolder: formats, resizing, hidden files and clear errors naming the path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import ctloop.imagefolder
from ctloop.imagefolder import read_image_folder, write_image_folder
from ctloop.images import ImageDataError, ImageSet
from ctloop.simulator import digits_split

DIGIT_NAMES = tuple(str(digit) for digit in range(10))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, ImageSet]:
    images = digits_split(0).golden.subset(np.arange(40))
    write_image_folder(images, tmp_path / "parts")
    return tmp_path / "parts", images


def two_classes(root: Path, make: Callable[[Path], None]) -> Path:
    """An ImageFolder with classes a and b, each holding one file that `make` writes."""
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        make(root / name)
    return root


def raises_naming(path: Path, message: str) -> pytest.RaisesExc[ImageDataError]:
    return pytest.raises(ImageDataError, match=f"^{re.escape(str(path))}: {message}")


def test_public_names() -> None:
    assert sorted(ctloop.imagefolder.__all__) == ["read_image_folder", "write_image_folder"]


def test_round_trip_keeps_pixels_and_labels(folder: tuple[Path, ImageSet]) -> None:
    root, original = folder
    loaded = read_image_folder(root, (8, 8))
    order = np.argsort(original.labels, kind="stable")  # folders are read class by class
    assert loaded.class_names == tuple(sorted({original.class_names[label] for label in original.labels}))
    assert [loaded.class_names[label] for label in loaded.labels] == [
        original.class_names[label] for label in original.labels[order]
    ]
    assert loaded.images.dtype == np.float32 and loaded.labels.dtype == np.int64
    np.testing.assert_allclose(loaded.images, original.images[order], atol=1 / 255)


def test_model_classes_fix_the_label_ids(folder: tuple[Path, ImageSet]) -> None:
    root, original = folder
    classes = ("scratch",) + DIGIT_NAMES
    loaded = read_image_folder(root, (8, 8), class_names=classes)
    assert loaded.class_names == classes
    np.testing.assert_array_equal(loaded.labels, np.sort(original.labels) + 1)


def test_one_folder_is_enough_when_the_model_gives_the_classes(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    Image.new("L", (8, 8), 255).save(tmp_path / "7" / "part.png")
    loaded = read_image_folder(tmp_path, (8, 8), class_names=DIGIT_NAMES)
    assert loaded.labels.tolist() == [7]


def test_a_larger_rgb_png_is_resized_to_height_by_width(tmp_path: Path) -> None:
    """Top half white, bottom half black: the orientation must survive the (H, W) resize."""
    pixels = np.zeros((60, 40, 3), np.uint8)
    pixels[:30] = 255
    root = two_classes(tmp_path / "line", lambda folder: Image.fromarray(pixels).save(folder / "p.png"))
    loaded = read_image_folder(root, (6, 10))
    assert loaded.images.shape == (2, 6, 10)
    np.testing.assert_allclose(loaded.images[:, :2], 1.0, atol=1e-6)
    np.testing.assert_allclose(loaded.images[:, -2:], 0.0, atol=1e-6)


def test_a_jpeg_becomes_grey_with_the_usual_luma_weights(tmp_path: Path) -> None:
    colour = (200, 100, 50)
    root = two_classes(tmp_path / "line", lambda folder: Image.new("RGB", (32, 24), colour).save(folder / "p.jpg"))
    loaded = read_image_folder(root, (8, 8))
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(loaded.images, luma, atol=0.02)


@pytest.mark.parametrize(
    ("picture", "expected"),
    [
        (Image.new("LA", (16, 16), (200, 255)), 200 / 255),
        (Image.new("RGBA", (16, 16), (255, 255, 255, 0)), 0.0),  # transparent: empty background
        (Image.new("RGBA", (16, 16), (255, 255, 255, 255)), 1.0),
        (Image.new("RGB", (16, 16), (255, 255, 255)).convert("P"), 1.0),
        (Image.new("1", (16, 16), 1), 1.0),
        (Image.fromarray(np.full((16, 16), 32768, np.uint16)), 32768 / 65535),  # 16-bit grey
    ],
    ids=["grey+alpha", "transparent", "opaque-rgba", "palette", "bilevel", "16-bit"],
)
def test_every_png_mode_becomes_grey_in_range(tmp_path: Path, picture: Image.Image, expected: float) -> None:
    root = two_classes(tmp_path / "line", lambda folder: picture.save(folder / "p.png"))
    loaded = read_image_folder(root, (8, 8))
    np.testing.assert_allclose(loaded.images, expected, atol=1 / 255)


def test_hidden_files_and_tool_litter_are_skipped(folder: tuple[Path, ImageSet]) -> None:
    root, original = folder
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".git").mkdir()
    (root / "__MACOSX").mkdir()
    (root / "3" / ".DS_Store").write_bytes(b"junk")
    (root / "3" / "._00001.png").write_bytes(b"AppleDouble")
    (root / "3" / "Thumbs.db").write_bytes(b"junk")
    assert len(read_image_folder(root, (8, 8))) == len(original)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "no such folder; expected an ImageFolder"),
        (lambda root: root.write_bytes(b"x"), "not a directory; expected an ImageFolder"),
        (lambda root: root.mkdir(), "no class sub-folders; expected one sub-folder per class"),
        (lambda root: (root / ".hidden").mkdir(parents=True), "no class sub-folders"),
        (lambda root: (root / "ok").mkdir(parents=True), r"only one class folder \(ok\); a classifier needs at least two"),
    ],
    ids=["missing", "a-file", "empty", "only-hidden", "one-class"],
)
def test_bad_roots_are_named(tmp_path: Path, make: Callable[[Path], None], message: str) -> None:
    root = tmp_path / "line"
    make(root)
    with raises_naming(root, message):
        read_image_folder(root, (8, 8))


def test_an_empty_class_folder_is_named(folder: tuple[Path, ImageSet]) -> None:
    root, _ = folder
    (root / "scratch").mkdir()
    (root / "scratch" / ".DS_Store").write_bytes(b"junk")
    with raises_naming(root / "scratch", "empty class folder; add images or remove the folder"):
        read_image_folder(root, (8, 8))


def truncated(folder: Path, suffix: str) -> bytes:
    """The first half of a real image file of that format."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    picture.save(folder / f"whole.{suffix}")
    whole = (folder / f"whole.{suffix}").read_bytes()
    (folder / f"whole.{suffix}").unlink()
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", lambda folder: b"hello", r"not a PNG or JPEG file \(suffix .txt\)"),
        ("README", lambda folder: b"hello", r"not a PNG or JPEG file \(suffix none\)"),
        ("fake.png", lambda folder: b"this is text", "unreadable image"),
        ("cut.png", lambda folder: truncated(folder, "png"), "unreadable image"),
        ("cut.jpg", lambda folder: truncated(folder, "jpg"), "unreadable image"),
        ("empty.jpeg", lambda folder: b"", "unreadable image"),
    ],
)
def test_bad_files_are_named(
    folder: tuple[Path, ImageSet], name: str, content: Callable[[Path], bytes], message: str
) -> None:
    root, _ = folder
    target = root / "3" / name
    target.write_bytes(content(root / "3"))
    with raises_naming(target, message):
        read_image_folder(root, (8, 8))


def test_an_image_of_another_format_is_named(folder: tuple[Path, ImageSet]) -> None:
    root, _ = folder
    target = root / "3" / "really-a-gif.png"
    Image.new("L", (8, 8)).save(target, format="GIF")
    with raises_naming(target, "a GIF image; expected PNG or JPEG"):
        read_image_folder(root, (8, 8))


def test_a_folder_outside_the_model_classes_is_named(folder: tuple[Path, ImageSet]) -> None:
    root, _ = folder
    with raises_naming(root / "2", r"class '2' is not one of the model's classes \['0', '1'\]"):
        read_image_folder(root, (8, 8), class_names=("0", "1"))


def test_an_image_outside_any_class_folder_is_named(folder: tuple[Path, ImageSet]) -> None:
    root, _ = folder
    Image.new("L", (8, 8)).save(root / "stray.png")
    with raises_naming(root / "stray.png", "image outside any class folder"):
        read_image_folder(root, (8, 8))


def test_a_folder_inside_a_class_folder_is_named(folder: tuple[Path, ImageSet]) -> None:
    root, _ = folder
    (root / "3" / "more").mkdir()
    with raises_naming(root / "3" / "more", "a folder inside a class folder"):
        read_image_folder(root, (8, 8))


@pytest.mark.parametrize("size", [(8,), (0, 8), (8.0, 8), (True, 8)])
def test_a_bad_image_size_is_refused(folder: tuple[Path, ImageSet], size: tuple[int, int]) -> None:
    root, _ = folder
    with pytest.raises(ValueError, match=re.escape(f"image_size must be (height, width) in pixels, got {size!r}")):
        read_image_folder(root, size)


def test_write_refuses_a_folder_that_already_holds_files(folder: tuple[Path, ImageSet]) -> None:
    root, images = folder
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(root))}: exists and is not an empty folder"):
        write_image_folder(images, root)


def test_write_refuses_a_class_name_that_is_not_a_folder_name(tmp_path: Path) -> None:
    images = ImageSet(np.zeros((1, 8, 8), np.float32), np.zeros(1, np.int64), ("a/b", "c"))
    with pytest.raises(ImageDataError, match="class name 'a/b' cannot be a folder name"):
        write_image_folder(images, tmp_path / "out")
