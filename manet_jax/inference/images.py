"""Finding input images and decoding them as upright 8-bit RGB, whatever their format."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from manet_jax.data.image_files import is_image_file

MAX_SIDE = 4096  # larger images are downscaled to this longest side while decoding
_ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageLoadError(ValueError):
    """An input that cannot be decoded as an image; the message names the file and the cause."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """Upright RGB pixels of an image file, possibly downscaled, and the upright original size."""

    pixels: np.ndarray  # (H, W, 3) uint8
    size: tuple[int, int]  # (width, height) of the upright image before any downscaling

    @property
    def scale(self) -> float:
        """pixels' resolution over the original's (1.0 unless downscaled)."""
        return self.pixels.shape[1] / self.size[0]


def find_images(paths: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named by `paths`, each real file once (as the first path that names it), and
    (path, reason) for each path that names none and each symbolic link that loops or leads nowhere.

    A path is a file (taken whatever its extension, so that non-images get reported), a folder
    (searched recursively for image extensions, following links to folders; a link back to a folder
    above it is reported, not followed) or a glob pattern (`**` recurses without following links to
    folders, as bash's globstar).
    """
    found: dict[str, Path] = {}  # real path: the path it was found as
    skipped: dict[str, str] = {}  # path: why it names no file, each path once
    searched: set[str] = set()  # real paths of the folders searched

    def add(path: Path) -> None:
        try:
            found.setdefault(str(path.resolve(strict=True)), path)
        except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError for a loop
            skipped.setdefault(str(path), "a symbolic link that loops or leads nowhere")

    for path in paths:
        try:
            matches = [Path(path)] if os.path.lexists(path) else _glob(path)
        except ValueError as e:
            skipped.setdefault(path, f"not a valid glob pattern ({e})")
            continue
        if not matches:
            skipped.setdefault(path, "no such file or folder, and no file matches it as a glob")
        for match in matches:
            if match.is_dir():
                for image in _search_folder(match, searched, skipped):
                    add(image)
            else:
                add(match)
    return list(found.values()), list(skipped.items())


def _glob(pattern: str) -> list[Path]:
    """The paths that match `pattern`, sorted; raises ValueError for a pattern pathlib refuses."""
    path = Path(pattern)
    if path.is_absolute():
        return sorted(Path(path.anchor).glob(str(path.relative_to(path.anchor))))
    return sorted(Path().glob(pattern))


def _search_folder(folder: Path, searched: set[str], skipped: dict[str, str]) -> list[Path]:
    """The image files below `folder` in folders not searched before (sub-folders in name order),
    sorted; links to folders are followed, and a link back to a folder above it is added to `skipped`."""
    images = []
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched:
            if os.path.commonpath([real, os.path.realpath(os.path.dirname(root))]) == real:
                skipped.setdefault(root, f"a symbolic link loop: it leads back to {real}")
            folders.clear()
            continue
        searched.add(real)
        folders.sort()
        images += [Path(root, name) for name in names if is_image_file(Path(name))]
    return sorted(images)


def load_image(path: Path, max_side: int = MAX_SIDE) -> LoadedImage:
    """The image at `path` as upright 8-bit RGB (EXIF orientation applied), at most `max_side` wide or
    high.

    Greyscale, palette, RGBA (alpha dropped, as torchvision's loader and the dataset builders do),
    CMYK and 16-bit images are converted; JPEGs larger than `max_side` are decoded at a reduced
    scale, and the decoded pixels are downscaled before anything else is done with them. Raises
    ImageLoadError for non-images, truncated or corrupt files, and images beyond Pillow's
    decompression-bomb limit.
    """
    with _decoding(path), _opened(path, max_side) as (image, (width, height)):
        if image.getexif().get(_ORIENTATION) in _TRANSPOSED:  # a PNG's EXIF is read with its pixels
            width, height = height, width
        image.load()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)  # frees the full size
        pixels = _rgb(ImageOps.exif_transpose(image))
    return LoadedImage(pixels, (width, height))


def decoded_size(source: Path | BinaryIO, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the pixels `load_image` decodes `source` at, from its header alone: its
    size, or a JPEG's reduced scale. Raises ImageLoadError as load_image does."""
    with _decoding(source), _opened(source, max_side) as (image, _):
        return image.size


@contextlib.contextmanager
def _opened(source: Path | BinaryIO, max_side: int) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """(`source` opened, nothing decoded yet; its size): a JPEG larger than `max_side` is set to
    decode at the smallest scale that is not smaller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # downscaled when loaded
        image = Image.open(source)
    with image:
        size = image.size
        if max(size) > max_side:
            ratio = max_side / max(size)
            image.draft(None, (int(image.width * ratio), int(image.height * ratio)))
        yield image, size


@contextlib.contextmanager
def _decoding(source: Path | BinaryIO) -> Iterator[None]:
    """Pillow's errors about `source` as ImageLoadError naming it."""
    try:
        yield
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{source}: not an image file Pillow can identify") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{source}: too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for damaged or unsupported files
        raise ImageLoadError(f"{source}: cannot be decoded ({type(e).__name__}: {e})") from None


def _rgb(image: Image.Image) -> np.ndarray:
    """`image` as (H, W, 3) uint8 RGB; 16-bit greyscale keeps its high byte, as Pillow does for
    16-bit colour."""
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))
