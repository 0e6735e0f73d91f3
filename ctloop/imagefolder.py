"""A user's own images: an ImageFolder directory, one sub-folder per class.

PNG or JPEG, grey, RGB, RGBA or palette; every image becomes grey, is resized to the model's
input and scaled to [0, 1]. Anything unusable (a missing folder, an unreadable file, an empty
class folder, a single class) is an ImageDataError that names the path, raised here, before any
of it can reach torch and fail there with a message about tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ctloop.images import ImageDataError, ImageSet

__all__ = ["read_image_folder", "write_image_folder"]

_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG")
# Left behind by file managers and zip tools; never part of anyone's data.
_JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# What PIL raises for files it cannot decode: unidentified (an OSError), truncated, bad chunks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image_folder(
    root: str | Path, image_size: tuple[int, int], class_names: Sequence[str] | None = None
) -> ImageSet:
    """Read `root`/<class>/<image> into an ImageSet of grey (H, W) = `image_size` images.

    Args:
        root: the ImageFolder directory.
        image_size: (height, width) of the model's input.
        class_names: the model's classes; the sub-folders must be among them and the labels
            index into them, so ids mean the same as in the model. None: the sorted sub-folder
            names are the classes, and there must be at least two.
    """
    height, width = _check_size(image_size)
    root = Path(root)
    folders = _class_folders(root)
    if class_names is None:
        if len(folders) < 2:
            raise ImageDataError(
                f"{root}: only one class folder ({folders[0].name}); a classifier needs at least two"
            )
        names = tuple(folder.name for folder in folders)
    else:
        names = tuple(class_names)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in names:
            raise ImageDataError(
                f"{folder}: class {folder.name!r} is not one of the model's classes {list(names)}; "
                "rename or remove the folder"
            )
        files = _image_files(folder)
        images += [_read_image(path, height, width) for path in files]
        labels += [names.index(folder.name)] * len(files)
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), names)


def write_image_folder(images: ImageSet, root: str | Path) -> None:
    """Write `images` as 8-bit grey PNGs under `root`/<class>/, the layout read_image_folder reads.

    A class without images gets no folder, because read_image_folder rejects empty ones. `root`
    must be new or empty so that the result holds exactly `images`.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty folder; write to a new folder")
    for name in images.class_names:
        if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise ImageDataError(f"class name {name!r} cannot be a folder name under {root}")
    digits = max(5, len(str(len(images))))
    pixels = np.round(images.images * 255).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, images.labels)):
        folder = root / images.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:0{digits}d}.png")


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) pair, or ValueError: a wrong size is a caller's mistake, not data's."""
    if (
        len(image_size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in image_size)
        or min(image_size) < 1
    ):
        raise ValueError(f"image_size must be (height, width) in pixels, got {image_size!r}")
    return image_size[0], image_size[1]


def _visible(folder: Path) -> list[Path]:
    """Entries of `folder`, sorted, without hidden files (.DS_Store, ._x) and tool litter."""
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.name not in _JUNK_NAMES
    )


def _class_folders(root: Path) -> list[Path]:
    """The class sub-folders of `root`; ImageDataError if `root` is not an ImageFolder."""
    if not root.exists():
        raise ImageDataError(f"{root}: no such folder; expected an ImageFolder (one sub-folder per class)")
    if not root.is_dir():
        raise ImageDataError(f"{root}: not a directory; expected an ImageFolder (one sub-folder per class)")
    entries = _visible(root)
    for path in entries:
        if path.is_file() and path.suffix.lower() in _SUFFIXES:
            raise ImageDataError(
                f"{path}: image outside any class folder; move it into the sub-folder of its class"
            )
    folders = [path for path in entries if path.is_dir()]
    if not folders:
        raise ImageDataError(
            f"{root}: no class sub-folders; expected one sub-folder per class, e.g. {root / 'ok'}/*.png"
        )
    return folders


def _image_files(folder: Path) -> list[Path]:
    """The image files of one class folder; ImageDataError for anything else or for none."""
    files = _visible(folder)
    if not files:
        raise ImageDataError(f"{folder}: empty class folder; add images or remove the folder")
    for path in files:
        if path.is_dir():
            raise ImageDataError(f"{path}: a folder inside a class folder; put the images directly in {folder}")
        if path.suffix.lower() not in _SUFFIXES:
            raise ImageDataError(f"{path}: not a PNG or JPEG file (suffix {path.suffix or 'none'})")
    return files


def _read_image(path: Path, height: int, width: int) -> np.ndarray:
    """One PNG/JPEG file as grey float32 (height, width) in [0, 1]."""
    try:
        with Image.open(path) as picture:
            picture.verify()  # checks PNG chunk checksums, which decoding alone may not
        with Image.open(path) as picture:
            picture.load()  # decodes every byte: a truncated file fails here, not later
            image_format = picture.format
            grey = _to_grey(ImageOps.exif_transpose(picture))
    except _DECODE_ERRORS as error:
        raise ImageDataError(f"{path}: unreadable image ({error})") from error
    if image_format not in _FORMATS:
        raise ImageDataError(f"{path}: a {image_format} image; expected PNG or JPEG")
    if grey.shape != (height, width):
        resized = Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR)
        grey = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return grey


def _to_grey(picture: Image.Image) -> np.ndarray:
    """Grey float32 in [0, 1] from any mode a PNG or JPEG opens in.

    Transparent pixels are laid over black: in the ImageSet convention 0 is empty background.
    16-bit grey PNGs keep their full range instead of being clipped to 8 bits.
    """
    if picture.mode in _SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(picture, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if "A" in picture.mode or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
