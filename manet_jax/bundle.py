"""The model bundle: MA-Net's variables and the header that says how to use them, on disk.

A bundle is a directory with `variables/` (an Orbax tree `{'params', 'batch_stats'}`) and
`header/manet.json` (a `ModelSpec`: class names, input size, beta, compute dtype, multi-scale
wiring, where the weights came from, the face template of its training data). The converter
writes bundles; the trainer writes one in every checkpoint, `<workdir>/checkpoints/<step>/`,
beside the run state it resumes from.
`load_bundle` reads a bundle, such a checkpoint, or a trainer workdir (its best checkpoint), and
the two layouts manet-jax wrote before bundles existed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import SingleDeviceSharding

from manet_jax import storage
from manet_jax.data.labels import CANONICAL_CLASSES
from manet_jax.errors import ConfigError, ManetError
from manet_jax.models import BETA, MULTISCALE_WIRINGS, MANet, check_image_size

VARIABLES, HEADER = "variables", "header"  # the bundle's items (Orbax item directories)
HEADER_FILE = "manet.json"  # in HEADER
CHECKPOINTS = "checkpoints"  # a trainer workdir's checkpoints, one bundle per step
METRIC = "accuracy"  # a checkpoint's eval accuracy of the fused prediction: what makes it the best
FORMAT, VERSION = "manet-jax model bundle", 1
DTYPES = ("float32", "bfloat16", "float64")  # float64 (with JAX_ENABLE_X64=1): for numerics checks
# Written by manet-jax before bundles (up to commit 30481f4): a header beside the variables or
# beside a workdir's checkpoints, whose trees hold the whole train state as one item.
LEGACY_HEADER, LEGACY_CONFIG, LEGACY_STATE = "manet.json", "config.json", "state"


class BundleError(ManetError, ValueError):
    """A path that holds no usable model; the message names the path and the cause."""


LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # MTCNN's five, in its order


@dataclasses.dataclass(frozen=True)
class FaceTemplate:
    """Where a model's training data placed the five LANDMARKS: (x, y) per landmark as fractions of
    the input's width and height, with how they were measured (`faces` found in `images`, the median
    absolute deviation per landmark in the same fractions; 0 and () for a template not measured)."""

    points: tuple[tuple[float, float], ...]
    source: str
    faces: int = 0
    images: int = 0
    spread: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "points", _pairs(self.points, "points"))
        object.__setattr__(self, "spread", _pairs(self.spread, "spread") if len(self.spread) else ())

    def describe(self, size: int) -> str:
        """The template's points (and spread) in pixels at size x size, and its source, on one line."""
        points = ", ".join(f"{name} ({x * size:.1f}, {y * size:.1f})" for name, (x, y) in zip(LANDMARKS, self.points))
        spread = (f"; spread {max(max(pair) for pair in self.spread) * size:.1f} px at most"
                  if self.spread else "")
        return f"{points} at {size}x{size}{spread}; {self.source}"

    @classmethod
    def from_json(cls, value: Any, where: str) -> FaceTemplate:
        try:
            return cls(**value)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: not a face template ({e})") from None


def _pairs(values: Any, name: str) -> tuple[tuple[float, float], ...]:
    pairs = tuple((float(x), float(y)) for x, y in values)
    if len(pairs) != len(LANDMARKS) or not all(map(math.isfinite, np.ravel(pairs))):
        raise ValueError(f"{name} must be {len(LANDMARKS)} finite (x, y) pairs, one per {', '.join(LANDMARKS)}")
    return pairs


def read_face_template(path: epath.PathLike, option: str) -> FaceTemplate:
    """The face template in the JSON file at `path` (as `python -m manet_jax.face_template` writes
    it), given as command-line `option`."""
    path = epath.Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{option} {path}: cannot be read as JSON ({e})") from None
    return FaceTemplate.from_json(value, f"{option} {path}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a bundle's variables are and how to run them."""

    class_names: tuple[str, ...]
    image_size: int = 224
    beta: float = BETA  # prediction = beta * local + (1 - beta) * global logits
    dtype: str = "float32"  # compute dtype
    multiscale_wiring: str = MULTISCALE_WIRINGS[0]
    source: str = ""  # where the weights came from
    face_template: FaceTemplate | None = None  # where its training data placed faces' landmarks

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if isinstance(self.face_template, dict):
            object.__setattr__(self, "face_template", FaceTemplate.from_json(self.face_template, "face_template"))
        check_image_size(self.image_size, "image_size")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.multiscale_wiring not in MULTISCALE_WIRINGS:
            raise ConfigError(f"multiscale_wiring must be one of {MULTISCALE_WIRINGS}, got {self.multiscale_wiring!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def module(self, branch_execution: str = "vmap") -> MANet:
        """The MANet these variables belong to (see `branch_execution_for`)."""
        return MANet(self.num_classes, dtype=np.dtype(self.dtype), branch_execution=branch_execution,
                     multiscale_wiring=self.multiscale_wiring)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self),
                "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, header: dict[str, Any], where: str) -> ModelSpec:
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise BundleError(f"{where}: not a {FORMAT} header of version {VERSION}")
        fields = {field.name for field in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in header.items() if key in fields})
        except (TypeError, ConfigError, BundleError) as e:
            raise BundleError(f"{where}: {e}") from e


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A model: its spec and variables (NumPy arrays), read from `path` (the checkpoint's `step`)."""

    spec: ModelSpec
    variables: dict[str, Any]
    path: str = ""
    step: int | None = None

    def resized(self, image_size: int | None, option: str) -> Bundle:
        """The bundle run at `image_size` (None: its own), checked as command-line `option`."""
        if image_size is None:
            return self
        check_image_size(image_size, option)
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, image_size=image_size))


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """MA-Net's class order for up to 8 classes (7: RAF-DB, AffectNet-7, ...), else class_<i>."""
    if num_classes <= len(CANONICAL_CLASSES):
        return CANONICAL_CLASSES[:num_classes]
    return tuple(f"class_{i}" for i in range(num_classes))


def absolute_path(path: epath.PathLike) -> epath.Path:
    """`path` made absolute, as Orbax requires; a URL such as `gs://bucket/run` stays as it is
    (`Path.absolute()` would put the working directory in front of it)."""
    path = epath.Path(path)
    return path if storage.is_url(path) else path.absolute()


def best_step(candidates: Iterable[tuple[int, float | None]]) -> int | None:
    """The step of the highest accuracy among (step, accuracy or None), the earliest on ties (the
    official code keeps a later epoch only when it is strictly better); None if none has a
    finite one."""
    best = None
    for step, accuracy in sorted(candidates):
        if accuracy is not None and math.isfinite(accuracy) and (best is None or accuracy > best[1]):
            best = (step, accuracy)
    return None if best is None else best[0]


def state_bytes(state: Any) -> int:
    """Bytes of the arrays (or abstract arrays) in `state`: its size on disk before it is written."""
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state))


def save_bundle(directory: epath.PathLike, variables: dict[str, Any], spec: ModelSpec) -> epath.Path:
    """Writes `variables` ({'params', 'batch_stats'}) and `spec` as a bundle in a new (or empty)
    directory, whole or not at all (`storage.writing`); the arrays through Orbax's synchronous
    checkpointer, whose failure ends the save (no writer thread lives on)."""
    directory = check_new_bundle(directory)
    variables = jax.device_get(variables)
    with storage.writing([storage.output(directory, folder=True)], state_bytes(variables)) as (temporary,):
        with _quiet_failures(temporary), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(temporary / VARIABLES, args=ocp.args.StandardSave(variables))
        (temporary / HEADER).mkdir()
        (temporary / HEADER / HEADER_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return directory


@contextlib.contextmanager
def _quiet_failures(directory: epath.Path) -> Iterator[None]:
    """An Orbax save whose failure is raised without Orbax's threads logging it with tracebacks
    (absl) or asyncio logging each of its failed tasks as they are collected: those loggers are
    quiet until the writes still in flight under `directory` end and the tasks are collected, then
    as they were."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    except BaseException:
        storage.settled(directory)
        gc.collect()
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_new_bundle(directory: epath.PathLike) -> epath.Path:
    """`directory`, made absolute, if a bundle can be saved there (`save_bundle`, which also checks
    the free space); raises BundleError if it holds a model, else OutputError (`storage.check_outputs`)."""
    directory = absolute_path(directory)
    if is_model_directory(directory) or (directory / VARIABLES).exists():
        raise BundleError(f"{directory}: already holds a model; choose a new directory")
    storage.check_outputs([storage.output(directory, folder=True)])
    return directory


def load_bundle(path: epath.PathLike) -> Bundle:
    """The model at `path`: a bundle, a trainer checkpoint, or a trainer workdir (its best
    checkpoint by eval accuracy, else its latest), written now or before bundles existed."""
    path = absolute_path(path)
    if not path.exists():
        raise BundleError(f"{path}: does not exist")
    if (path / HEADER / HEADER_FILE).is_file():
        spec = ModelSpec.from_json(_read_json(path / HEADER / HEADER_FILE), str(path / HEADER / HEADER_FILE))
        step = int(path.name) if path.name.isdigit() and path.parent.name == CHECKPOINTS else None
        return Bundle(spec, _restore_tree(path / VARIABLES), str(path), step)
    if (path / CHECKPOINTS).is_dir():
        step = workdir_model_step(path)
        if not (path / LEGACY_HEADER).is_file():
            return load_bundle(path / CHECKPOINTS / str(step))
        state = _restore_tree(path / CHECKPOINTS / str(step) / LEGACY_STATE)
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        return Bundle(_legacy_spec(path), variables, str(path), step)
    if (path / LEGACY_HEADER).is_file() and (path / VARIABLES).is_dir():
        return Bundle(_legacy_spec(path), _restore_tree(path / VARIABLES), str(path))
    raise BundleError(f"{path}: not a manet-jax model (expected {VARIABLES}/ and {HEADER}/{HEADER_FILE}, "
                      f"or a trainer workdir with {CHECKPOINTS}/)")


def is_model_directory(path: epath.PathLike) -> bool:
    """Whether `path` is laid out as a model `load_bundle` reads (a bundle or trainer checkpoint,
    a trainer workdir, an older bundle), without reading it."""
    path = absolute_path(path)
    return ((path / HEADER / HEADER_FILE).is_file() or (path / CHECKPOINTS).is_dir()
            or ((path / LEGACY_HEADER).is_file() and (path / VARIABLES).is_dir()))


def workdir_model_step(workdir: epath.PathLike) -> int:
    """The checkpoint of a trainer workdir that is its model: the best by eval accuracy (see
    `best_step`), else the latest."""
    directory = absolute_path(workdir) / CHECKPOINTS
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    try:
        with ocp.CheckpointManager(directory, options=options) as manager:
            steps = manager.all_steps()
            metrics = [(step, (manager.metrics(step) or {}).get(METRIC)) for step in steps]
    except Exception as e:  # Orbax raises many types for damaged checkpoint metadata
        raise BundleError(f"{directory}: cannot be read ({type(e).__name__}: {e})") from e
    if not steps:
        raise BundleError(f"{directory}: holds no checkpoint")
    best = best_step(metrics)
    return max(steps) if best is None else best


def _read_json(path: epath.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot be read as JSON ({e})") from e


def _restore_tree(directory: epath.Path) -> dict[str, Any]:
    """An Orbax tree as NumPy arrays on this host, whatever mesh wrote it."""
    device = SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(directory).item_metadata.tree
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
            tree = checkpointer.restore(directory, target)
    except Exception as e:  # Orbax raises many types for damaged trees
        raise BundleError(f"{directory}: cannot be restored ({type(e).__name__}: {e})") from e
    return jax.tree.map(np.asarray, tree)


def _legacy_spec(directory: epath.Path) -> ModelSpec:
    """The spec of a pre-bundle checkpoint or workdir: its header, and a workdir's config."""
    header = _read_json(directory / LEGACY_HEADER)
    config = _read_json(directory / LEGACY_CONFIG) if (directory / LEGACY_CONFIG).is_file() else {}
    return ModelSpec(tuple(header.get("class_names") or default_class_names(header["num_classes"])),
                     image_size=config.get("image_size", 224), beta=config.get("beta", BETA),
                     dtype=config.get("dtype", "float32"), source=header.get("source", ""))
