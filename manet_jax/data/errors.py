"""Errors raised while naming, locating, building and reading the datasets."""

from __future__ import annotations

from collections.abc import Sequence

from manet_jax.errors import ManetError


class DatasetNameError(ManetError, ValueError):
    """A dataset name, config or split that does not exist; the message lists the valid ones."""


class DataDirError(ManetError, ValueError):
    """A data dir that is a file, lies beneath one, or cannot be written where a dataset is to be
    generated; the message names it."""


class DatasetNotFoundError(ManetError, FileNotFoundError):
    """A dataset that needs a manual download has not been prepared in the data dir."""


class ManualFilesError(ManetError, FileNotFoundError):
    """The manually downloaded files are missing or not laid out as expected."""


class BadImageFilesError(ManetError, ValueError):
    """Some source images are missing or cannot be decoded; `bad` lists (file, reason)."""

    def __init__(self, dataset: str, bad: Sequence[tuple[str, str]]):
        self.bad = list(bad)
        lines = "\n".join(f"  {name}: {reason}" for name, reason in self.bad)
        super().__init__(
            f"{dataset}: {len(self.bad)} image file(s) are missing or unreadable:\n{lines}\n"
            "Replace them, or build without them with --skip-corrupt (skip_corrupt=True); "
            "skipped files are then listed in the dataset's metadata.")


class ImageFolderError(ManetError, ValueError):
    """A folder of images (a tool's --images) that is missing, empty or holds an unreadable image."""


class ClassMapError(ManetError, ValueError):
    """A dataset class that has no counterpart among a model's classes, or a class map entry naming
    a class that does not exist; the message names the class."""
