"""Errors raised while locating, building and reading the datasets."""

from __future__ import annotations

from collections.abc import Sequence


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that needs a manual download has not been prepared in the data dir."""


class ManualFilesError(FileNotFoundError):
    """The manually downloaded files are missing or not laid out as expected."""


class BadImageFilesError(ValueError):
    """Some source images are missing or cannot be decoded; `bad` lists (file, reason)."""

    def __init__(self, dataset: str, bad: Sequence[tuple[str, str]]):
        self.bad = list(bad)
        lines = "\n".join(f"  {name}: {reason}" for name, reason in self.bad)
        super().__init__(
            f"{dataset}: {len(self.bad)} image file(s) are missing or unreadable:\n{lines}\n"
            "Replace them, or build without them with --skip_corrupt (skip_corrupt=True); "
            "skipped files are then listed in the dataset's metadata.")
