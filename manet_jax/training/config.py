"""Trainer configuration: the base config every `configs/*.py` extends, loading and checks.

Configs are `ml_collections.ConfigDict`s returned by a config file's `get_config()`. On the
command line `--config configs/raf.py --config.learning_rate=0.02` loads a file and overrides
keys (`--config.input.flip_prob=0` for the input sub-config), each value read as its key's type (as
ml_collections' config flags read them; `None` for keys whose default is None). A key that
`base_config` lacks, set by the file or an override, and a value that does not read as its key's
type are errors naming the key and the file; the loaded config is locked.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ml_collections
from absl import flags
from etils import epath
from ml_collections.config_dict import placeholder

from manet_jax.bundle import ModelSpec, read_face_template
from manet_jax.data.options import input_config
from manet_jax.errors import ConfigError
from manet_jax.models import MULTISCALE_WIRINGS
from manet_jax.storage import replace_text


REQUIRED = ("dataset", "num_epochs", "batch_size", "learning_rate")
LR_SCHEDULES = ("step", "cosine")


def _counts(value) -> bool:
    return value >= 1


def _positive(value) -> bool:  # False for NaN, as every check here
    return 0 < value < math.inf


def _fraction(value) -> bool:
    return 0 <= value <= 1


def _interval(low: float, high: float, open_low: bool) -> Callable[[Sequence[float]], bool]:
    """Accepts (min, max) with low <= min <= max <= high (low < min if `open_low`)."""
    def check(pair) -> bool:
        return len(pair) == 2 and (low < pair[0] if open_low else low <= pair[0]) and pair[0] <= pair[1] <= high
    return check


# Every numeric key: (accepts its value, what it must be).
RANGES: dict[str, tuple[Callable, str]] = {
    **{key: (_counts, "an integer >= 1") for key in (
        "num_epochs", "batch_size", "lr_step_epochs", "log_every_steps", "eval_every_epochs",
        "checkpoint_every_epochs", "keep_checkpoints")},
    "warmup_epochs": (lambda v: 0 <= v < math.inf, "a finite number of epochs >= 0"),
    "eval_batch_size": (lambda v: v is None or v >= 1, "an integer >= 1 (or None: batch_size)"),
    "learning_rate": (_positive, "a positive finite number"),
    "lr_gamma": (_positive, "a positive finite number (StepLR's factor)"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "beta": (_fraction, "in [0, 1] (the local branch's weight)"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "input.flip_prob": (_fraction, "a probability in [0, 1]"),
    "input.random_erasing": (_fraction, "a probability in [0, 1]"),
    "input.crop_scale": (_interval(0, 1, open_low=True), "(min, max) with 0 < min <= max <= 1"),
    "input.crop_ratio": (_interval(0, math.inf, open_low=True), "(min, max) with 0 < min <= max, finite"),
    "input.erasing_scale": (_interval(0, 1, open_low=False), "(min, max) with 0 <= min <= max <= 1"),
}


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with the reference's common settings (MA-Net `main.py`); a
    config file sets some of them, and `load_config` refuses any other key."""
    c = ml_collections.ConfigDict()
    # Data (manet_jax.data): a dataset name such as 'raf_db', 'affectnet/7', 'synthetic_faces/96', or
    # several joined by '+' ('affectnet/7+raf_db'): the union of their train splits, each example once an epoch.
    c.dataset = placeholder(str)
    c.data_dir = placeholder(str)  # None: $MANET_DATA_DIR, else the repository's data/, else ~/tensorflow_datasets
    # Evaluated every epoch, side by side: 'NAME[:SPLIT],...' (e.g. 'sfew,ferplus:test,fed_ro'); None: each
    # dataset of `dataset`. The first one ranks the checkpoints (the best is the highest fused accuracy on it).
    c.eval_dataset = placeholder(str)
    c.eval_split = placeholder(str)  # the split of eval sets that name none; None: the one the paper reports on
    c.image_size = 224
    c.input = input_config()  # sampling and augmentation of the training examples
    # Model and initialisation.
    c.init_from = ""  # '': from scratch; a converted checkpoint dir, trainer workdir or weight file
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32); float64 for checks
    c.beta = 0.6  # loss = beta CE(local) + (1 - beta) CE(global); prediction from the same mix
    c.multiscale_wiring = MULTISCALE_WIRINGS[0]  # the official code's version of the multi-scale blocks
    c.face_template = ""  # '': none; the training data's face template (python -m manet_jax.face_template), kept
    # in the models' header for predict's alignment
    c.init_from_other_wiring = False  # load an init_from model of the other multi-scale wiring anyway
    # Optimisation: SGD with momentum, coupled weight decay, and a learning-rate schedule: 'step' is the
    # reference's StepLR stepped once per epoch; 'cosine' a linear warm-up, then a cosine decay to 0 by the end.
    c.num_epochs = placeholder(int)
    c.batch_size = placeholder(int)  # global, over all devices and processes
    c.eval_batch_size = placeholder(int)  # None: batch_size
    c.learning_rate = placeholder(float)
    c.lr_schedule = "step"  # one of LR_SCHEDULES
    c.lr_step_epochs = placeholder(int)  # StepLR step_size (lr_schedule 'step')
    c.lr_gamma = 0.1  # StepLR gamma (lr_schedule 'step')
    c.warmup_epochs = 0.0  # linear warm-up (lr_schedule 'cosine'); may be a fraction of an epoch
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.seed = 0  # initialisation, data order and augmentation
    # Bookkeeping.
    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 2  # the latest N; the best by eval accuracy is kept as well
    c.profile_steps = ""  # 'A:B': a JAX profiler trace of steps A to B in <workdir>/profile; '': none
    return c


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, e.g. to extend a sibling config in `configs/`."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The locked, checked config of file `path` after `key=value` overrides (as --config.key=value)."""
    try:
        config = load_config_file(path)
    except ConfigError:
        raise
    except Exception as e:  # the file's own code failed: its line and the error, on one line
        raise ConfigError(f"cannot load the config file {path}{_line_in(path, e)}: "
                          f"{type(e).__name__}: {' '.join(str(e).split())}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return base_config() with its settings "
                          f"(manet_jax/training/config.py), not a {type(config).__name__}")
    base = base_config()
    unknown = next(_unknown_keys(config, base), None)
    if unknown is not None:
        raise ConfigError(f"{_unknown(unknown, base)} set by {path}; {KEYS_LISTED}")
    config.lock()
    for override in overrides:
        key, _, text = override.partition("=")
        _override(config, key, text, f"--config.{override}", path, base)
    check_config(config)
    return config


KEYS_LISTED = "the keys are listed in manet_jax/training/config.py"
_PARSERS: dict[type, tuple[flags.ArgumentParser, str]] = {  # as ml_collections' config flags parse them
    bool: (flags.BooleanParser(), "true or false"),
    int: (flags.IntegerParser(), "an integer"),
    float: (flags.FloatParser(), "a number"),
    str: (flags.ArgumentParser(), "a string"),
}


def _override(config: ml_collections.ConfigDict, key: str, text: str, option: str, path: str,
              base: ml_collections.ConfigDict) -> None:
    """Sets `config`'s dotted `key` to `text` read as the key's type, or raises a ConfigError
    naming the key and the config file."""
    *groups, name = key.split(".")
    node, base_node = config, base
    for group in groups:
        if not isinstance(node.get(group), ml_collections.ConfigDict):
            raise ConfigError(f"{_unknown(key, base)} in {option} for {path}; {KEYS_LISTED}")
        node, base_node = node[group], base_node[group]
    if name not in node:
        raise ConfigError(f"{_unknown(key, base)} in {option} for {path}; {KEYS_LISTED}")
    kind = node.get_type(name)
    if kind is ml_collections.ConfigDict:
        raise ConfigError(f"{option}: config.{key} of {path} is a group of keys; set one of them, "
                          f"e.g. --config.{key}.{next(iter(node[name].keys()))}=VALUE")
    if text == "None" and base_node[name] is None:  # an optional key, e.g. eval_batch_size: batch_size
        node[name] = None
        return
    try:
        node[name] = _tuple(text) if kind is tuple else _PARSERS[kind][0].parse(text)
    except ValueError:
        allowed = "a tuple such as (0.5, 1.0)" if kind is tuple else _PARSERS[kind][1]
        raise ConfigError(f"{option}: config.{key} of {path} takes {allowed}, not {text!r}") from None


def _tuple(text: str) -> tuple:
    """'(0.5, 1.0)', '0.5,1.0' or '[0.5, 1.0]' as a tuple; a single value as a 1-tuple."""
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        raise ValueError(text) from None
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _unknown_keys(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
                  prefix: str = "") -> Iterator[str]:
    """The dotted keys of `config` that `base` lacks."""
    for key in config.keys():
        if key not in base:
            yield prefix + key
        elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(base[key], ml_collections.ConfigDict):
            yield from _unknown_keys(config[key], base[key], f"{prefix}{key}.")


def _unknown(key: str, base: ml_collections.ConfigDict) -> str:
    """"unknown config key 'x' (did you mean 'y'?)", the suggestion's first wrong part replaced by
    the closest base key beside it."""
    parts = key.split(".")
    node = base
    for i, part in enumerate(parts):
        if part not in node:
            close = difflib.get_close_matches(part, list(node.keys()), n=1, cutoff=0.75)
            if close:
                return f"unknown config key '{key}' (did you mean '{'.'.join([*parts[:i], close[0], *parts[i + 1:]])}'?)"
            break
        node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            break
    return f"unknown config key '{key}'"


def _line_in(path: str, error: BaseException) -> str:
    """', line N' of the config file where `error` was raised (a syntax error's own line), if there."""
    if isinstance(error, SyntaxError):
        return f", line {error.lineno}" if error.lineno else ""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    return f", line {lines[-1]}" if lines else ""


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key that is unset or out of range (see RANGES; the
    image size, dtype and wiring as `ModelSpec` checks them)."""
    for key in REQUIRED:
        if config[key] is None:
            raise ConfigError(f"config.{key} is not set; the config file or --config.{key}=... must set it")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"config.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {config.lr_schedule!r}")
    if config.lr_schedule == "step" and config.lr_step_epochs is None:
        raise ConfigError("config.lr_step_epochs is not set; lr_schedule 'step' needs it "
                          "(the config file or --config.lr_step_epochs=... must set it)")
    try:
        model_spec(config, ())
    except ConfigError as e:
        raise ConfigError(f"config.{e}") from None
    for key, (accepts, allowed) in RANGES.items():
        value = config
        for part in key.split("."):
            value = value[part]
        if (value is not None or key != "lr_step_epochs") and not accepts(value):
            raise ConfigError(f"config.{key} must be {allowed}, got {value!r}")
    profile_steps(config)
    eval_sets(config)


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """(first, last) of config.profile_steps 'A:B' (1 <= A <= B), None for ''; raises ConfigError."""
    if not config.profile_steps:
        return None
    first, _, last = str(config.profile_steps).partition(":")
    if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
        raise ConfigError(f"config.profile_steps must be 'A:B', the first and last step to profile "
                          f"(1 <= A <= B), or '' for none; got {config.profile_steps!r}")
    return int(first), int(last)


def eval_sets(config: ml_collections.ConfigDict) -> list[tuple[str, str | None]]:
    """(dataset, split) of each set a run of `config` evaluates, in order: the entries
    'NAME[:SPLIT]' of config.eval_dataset, else each dataset of config.dataset. A split left out
    is config.eval_split (None: the dataset's own, the one the paper reports on)."""
    if config.eval_dataset is None:
        return [(name, config.eval_split) for name in config.dataset.split("+")]
    return parse_eval_sets(config.eval_dataset, config.eval_split, "config.eval_dataset")


def parse_eval_sets(text: str, default_split: str | None, option: str) -> list[tuple[str, str | None]]:
    """'NAME[:SPLIT],...' (e.g. 'sfew,ferplus:test,fed_ro') -> [(name, split)], a split left out
    being `default_split`; a malformed entry is a ConfigError naming `option`."""
    sets = []
    for entry in text.split(","):
        name, _, split = entry.strip().partition(":")
        if not name or "+" in name or (":" in entry and not split):
            raise ConfigError(f"{option}: {entry.strip()!r} is not NAME or NAME:SPLIT of one dataset "
                              f"(separate several with ',', e.g. 'sfew,ferplus:test,fed_ro')")
        sets.append((name, split or default_split))
    return sets


def model_spec(config: ml_collections.ConfigDict, class_names: Sequence[str]) -> ModelSpec:
    """The header of the models a run of `config` writes, for a dataset of `class_names`."""
    source = f"trained on {config.dataset} from {config.init_from or 'random initialisation'}"
    template = read_face_template(config.face_template, "config.face_template") if config.face_template else None
    return ModelSpec(tuple(class_names), image_size=config.image_size, beta=config.beta, dtype=config.dtype,
                     multiscale_wiring=config.multiscale_wiring, source=source, face_template=template)


def save_config(config: ml_collections.ConfigDict, path: os.PathLike) -> list[str]:
    """Writes the resolved config as JSON to `path`; returns the keys that differ from the file
    already there (a resumed run with changed settings)."""
    path = epath.Path(path)
    new = json.loads(config.to_json_best_effort())
    old = json.loads(path.read_text()) if path.exists() else new
    changed = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
    replace_text(path, json.dumps(new, indent=2) + "\n")
    return changed
