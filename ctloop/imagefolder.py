"""A user's own images: an ImageFolder directory, one sub-folder per class.

PNG or JPEG, grey, RGB, RGBA or palette; every image becomes grey, is resized to the model's
input and scaled to [0, 1]. Anything unusable (an unreadable file, an empty class folder, a
single class) is an ImageDataError that names the path, before any of it reaches torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ctloop.images import ImageDataError, ImageSet

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_image_folder(
    root: str | Path, image_size: tuple[int, int], class_names: Sequence[str] | None = None
) -> ImageSet:
    """Read `root`/<class>/<image> into an ImageSet of grey (H, W) = `image_size` images.

    Args:
        root: the ImageFolder directory.
        image_size: (height, width) of the model's input.
        class_names: the model's classes; the sub-folders must be among them. None: the sorted
            sub-folder names are the classes (at least two).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageDataError(f"{root}: not a directory; expected an ImageFolder (one sub-folder per class)")
    folders = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        raise ImageDataError(f"{root}: no class sub-folders; expected one sub-folder per class")
    names = tuple(class_names) if class_names is not None else tuple(folder.name for folder in folders)
    if class_names is None and len(folders) < 2:
        raise ImageDataError(f"{root}: only one class folder ({folders[0].name}); a classifier needs at least two")
    images, labels = [], []
    for folder in folders:
        if folder.name not in names:
            raise ImageDataError(f"{folder}: class {folder.name!r} is not one of the model's classes {list(names)}")
        files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
        if not files:
            raise ImageDataError(f"{folder}: empty class folder")
        for path in files:
            images.append(read_image(path, image_size))
            labels.append(names.index(folder.name))
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), names)


def read_image(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """One PNG/JPEG as grey float32 (H, W) in [0, 1]; ImageDataError names the file otherwise."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageDataError(f"{path}: not a PNG or JPEG file (suffix {path.suffix or 'none'})")
    height, width = image_size
    try:
        with Image.open(path) as picture:
            picture.load()
            grey = picture.convert("L").resize((width, height), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageDataError(f"{path}: unreadable image ({error})") from error
    return np.asarray(grey, dtype=np.float32) / 255.0


def write_image_folder(images: ImageSet, root: str | Path) -> None:
    """Write `images` as grey PNGs under `root`/<class>/ (for tests and demos)."""
    root = Path(root)
    for index, (image, label) in enumerate(zip(images.images, images.labels)):
        folder = root / images.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(folder / f"{index:05d}.png")
