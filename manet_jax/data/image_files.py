"""Reading, validating and encoding source images while a dataset is built."""

from __future__ import annotations

import collections
import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from manet_jax.data.errors import ImageFolderError

# torchvision's ImageFolder extensions (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Stored as they are: the input pipeline decodes these exactly like PIL does.
_PASS_THROUGH = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}

T = TypeVar("T")
R = TypeVar("R")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image_folder(folder: str | Path, limit: int, size: int) -> np.ndarray:
    """The first `limit` images under `folder` (searched recursively, sorted paths) as the
    evaluation pipeline feeds them: RGB, resized to size x size (PIL bilinear), float32 in [0, 1],
    (N, size, size, 3). Raises ImageFolderError naming the folder or the unreadable file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: no such directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))[:limit]
    if not files:
        raise ImageFolderError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
        except OSError as e:
            raise ImageFolderError(f"{path}: cannot read the image ({e})") from e
        images.append(np.asarray(resized, np.float32) / 255)
    return np.stack(images)


def checked_image_bytes(data: bytes) -> bytes:
    """`data` fully decoded with PIL as a check; returned unchanged if it is an RGB or greyscale
    JPEG/PNG, else converted to RGB (as torchvision's loader does) and returned as PNG.

    Raises OSError/ValueError (from PIL) if the data cannot be decoded completely.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ValueError("not an image file PIL can identify") from None
    with image:
        image.load()
        if (image.format, image.mode) in _PASS_THROUGH:
            return data
        return encode_image(image.convert("RGB"), "PNG")


def read_image_file(path: Path) -> bytes:
    """The checked, storable bytes of the image file at `path` (see `checked_image_bytes`)."""
    return checked_image_bytes(path.read_bytes())


def encode_image(image: Image.Image | np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """`image` encoded as JPEG (at `quality`) or PNG."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], num_threads: int | None = None
                ) -> Iterator[tuple[T, R | Exception]]:
    """(item, fn(item) or the exception it raised), in input order, computed by a thread pool
    with a bounded number of items in flight (PIL and numpy release the GIL while decoding)."""
    num_threads = num_threads or os.cpu_count() or 1
    window: collections.deque = collections.deque()

    def call(item: T) -> R | Exception:
        try:
            return fn(item)
        except Exception as e:  # noqa: BLE001 - reported per item by the caller
            return e

    with futures.ThreadPoolExecutor(num_threads) as pool:
        for item in items:
            window.append((item, pool.submit(call, item)))
            if len(window) >= 4 * num_threads:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()
