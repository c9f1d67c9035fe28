"""The TFDS builder base shared by all datasets, and the helpers for reading their manual files.

Every example holds the encoded image (JPEG or PNG, decodable exactly like PIL does), one canonical
label (MA-Net's order, see `labels.py`) and the source file's path relative to the dataset root.
Records are stored as ArrayRecord in generation order (no TFDS shuffling), and the labels of each
split are kept in the dataset metadata, so that the input pipeline can sample without a pass over
the images.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from manet_jax.data.errors import BadImageFilesError, ManualFilesError
from manet_jax.data.image_files import IMAGE_EXTENSIONS, is_image_file, ordered_map, read_image_file
from manet_jax.data.labels import class_names

IMAGE, LABEL, FILE_NAME = "image", "label", "file_name"  # feature keys
LABELS_METADATA, SKIPPED_METADATA = "labels", "skipped_files"  # metadata keys (per split)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One example to write: `load()` returns its encoded image or raises if it is unreadable."""

    file_name: str  # relative to the dataset root, '/'-separated
    label: int  # canonical index
    load: Callable[[], bytes]
    path: Path | None = None  # checked for existence before anything is written


def file_example(path: Path, root: Path, label: int) -> SourceExample:
    """An example stored as the image file at `path` (see `image_files.checked_image_bytes`)."""
    return SourceExample(path.relative_to(root).as_posix(), label, lambda: read_image_file(path),
                         path)


@dataclasses.dataclass
class NumClassesConfig(tfds.core.BuilderConfig):
    """A config that selects the 7- or 8-class version of a dataset."""

    num_classes: int = 7


def num_classes_configs(seven: str, eight: str) -> list[NumClassesConfig]:
    """Configs '7' and '8', described by `seven` and `eight`."""
    return [NumClassesConfig(name="7", num_classes=7, description=seven),
            NumClassesConfig(name="8", num_classes=8, description=eight)]


class FerBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the dataset builders: features, ordering, label metadata and bad-file handling.

    Subclasses implement `_source_examples` and, for manual downloads, set
    MANUAL_DOWNLOAD_INSTRUCTIONS (the expected layout and where to download the files from).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    NUM_CLASSES: ClassVar[int] = 7  # unless the builder config has a `num_classes`
    TRAIN_SPLIT: ClassVar[str | None] = "train"  # None: a dataset for evaluation only
    EVAL_SPLIT: ClassVar[str] = "test"  # the split papers report on
    HOMEPAGE: ClassVar[str] = ""

    def __init__(self, *, skip_corrupt: bool = False, **kwargs: Any):
        """`skip_corrupt`: build without missing or undecodable images (listed in the metadata
        under 'skipped_files') instead of failing. Other arguments go to TFDS; the file format
        defaults to ArrayRecord, which the input pipeline needs for random access."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.skip_corrupt = skip_corrupt
        self._pending_splits: set[str] = set()
        self._bad: dict[str, list[tuple[str, str]]] = {}

    @property
    def num_classes(self) -> int:
        return getattr(self.builder_config, "num_classes", None) or self.NUM_CLASSES

    def is_prepared(self) -> bool:
        """Like TFDS's, without its warning when the dataset simply has not been built."""
        return (self.data_path / "dataset_info.json").exists() and super().is_prepared()

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.builder_config.description if self.builder_config
                         else None) or self.__doc__,
            features=tfds.features.FeaturesDict({
                IMAGE: tfds.features.Image(shape=(None, None, 3)),
                LABEL: tfds.features.ClassLabel(names=class_names(self.num_classes)),
                FILE_NAME: tfds.features.Text(),
            }),
            supervised_keys=(IMAGE, LABEL),
            homepage=self.HOMEPAGE or None,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        """The examples of every split, read from `manual_dir` (None when nothing is downloaded).

        Raises ManualFilesError (naming the file or folder at fault) if the layout is wrong.
        """

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = None
        if self.MANUAL_DOWNLOAD_INSTRUCTIONS:
            try:
                manual_dir = Path(dl_manager.manual_dir)
            except AssertionError as e:  # TFDS: missing or empty, with our instructions
                raise ManualFilesError(f"{self.name}: {e}") from None
        try:
            splits = self._source_examples(manual_dir)
        except ManualFilesError as e:
            raise ManualFilesError(
                f"{self.name}: {e}\n\n{tfds.core.utils.dedent(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
            ) from None
        missing = {split: [(ex.file_name, "missing") for ex in examples
                           if ex.path is not None and not ex.path.is_file()]
                   for split, examples in splits.items()}
        if any(missing.values()) and not self.skip_corrupt:  # fail before decoding anything
            raise BadImageFilesError(self.name, [b for bad in missing.values() for b in bad])
        self._bad = missing
        self._pending_splits = set(splits)
        return {split: self._generate_examples(split, examples)
                for split, examples in splits.items()}

    def _generate_examples(self, split: str, examples: Sequence[SourceExample]
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Writes the loadable examples in order; bad files are reported after the last split."""
        missing = {name for name, _ in self._bad[split]}
        labels: list[int] = []
        todo = (ex for ex in examples if ex.file_name not in missing)
        for example, data in ordered_map(lambda ex: ex.load(), todo):
            if isinstance(data, Exception):
                self._bad[split].append((example.file_name, f"{type(data).__name__}: {data}"))
                continue
            yield len(labels), {IMAGE: data, LABEL: example.label, FILE_NAME: example.file_name}
            labels.append(example.label)
        self.info.metadata.setdefault(LABELS_METADATA, {})[split] = labels
        self.info.metadata.setdefault(SKIPPED_METADATA, {})[split] = self._bad[split]
        self._pending_splits.discard(split)
        if not self._pending_splits:
            self._report_bad_files()
        if not labels:
            raise ManualFilesError(f"{self.name}: no usable images in split '{split}'.")

    def _report_bad_files(self) -> None:
        bad = [b for split_bad in self._bad.values() for b in split_bad]
        if bad and not self.skip_corrupt:
            raise BadImageFilesError(self.name, bad)
        if bad:
            log.warning("%s: skipped %d missing or unreadable image file(s):\n%s", self.name,
                        len(bad), "\n".join(f"  {name}: {reason}" for name, reason in bad))


def first_existing(candidates: Sequence[Path], what: str) -> Path:
    """The first of `candidates` that exists, or ManualFilesError naming them all."""
    for path in candidates:
        if path.exists():
            return path
    raise ManualFilesError(
        f"expected {what} at {' or '.join(str(c) for c in candidates)}, but it is not there.")


def find_root(manual_dir: Path, marker: str, wrappers: Sequence[str] = ()) -> Path:
    """`manual_dir`, or its subfolder named in `wrappers`, whichever contains `marker`."""
    roots = [manual_dir] + [manual_dir / w for w in wrappers]
    found = first_existing([root / marker for root in roots], marker)
    return roots[[root / marker for root in roots].index(found)]


def require(path: Path, what: str) -> Path:
    """`path`, or ManualFilesError naming it if it does not exist."""
    if not path.exists():
        raise ManualFilesError(f"expected {what} at {path}, but it does not exist.")
    return path


def class_folder_examples(split_dir: Path, root: Path, folder_classes: Mapping[str, int],
                          num_classes: int) -> list[SourceExample]:
    """The images under `split_dir/<class folder>/` (torchvision ImageFolder style).

    `folder_classes` maps every accepted folder name to a canonical label; each of the
    `num_classes` labels needs exactly one folder holding at least one image.
    """
    require(split_dir, "the split folder")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f.name for f in folders if f.name not in folder_classes]
    if unknown:
        raise ManualFilesError(f"unexpected class folder(s) {unknown} in {split_dir}; "
                               f"expected folders named {sorted(folder_classes)}.")
    by_label: dict[int, list[Path]] = {}
    for folder in folders:
        by_label.setdefault(folder_classes[folder.name], []).append(folder)
    for label in range(num_classes):
        found = by_label.get(label, [])
        if len(found) != 1:
            names = sorted(k for k, v in folder_classes.items() if v == label)
            raise ManualFilesError(
                f"expected one class folder named {' or '.join(names)} in {split_dir}, "
                f"found {len(found)}.")
    examples = []
    for label in range(num_classes):
        folder = by_label[label][0]
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise ManualFilesError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}.")
        examples += [file_example(p, root, label) for p in files]
    return examples

