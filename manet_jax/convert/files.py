"""Reading and writing PyTorch-side weight files without running pickled code."""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from manet_jax import storage
from manet_jax.convert.core import normalise_state_dict
from manet_jax.errors import ManetError

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's messages embolden some words
INSTALL_TORCH = "pip install 'manet-jax[torch]'  (CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


class CheckpointFileError(ManetError, ValueError):
    """A weight file that cannot be read as a state_dict; the message names the file and the cause."""


def _import_torch(path: Path):
    try:
        import torch
    except ImportError as e:
        raise CheckpointFileError(f"{path}: reading PyTorch files needs torch, which is not installed. "
                                  f"Install it with: {INSTALL_TORCH}; or convert the file to "
                                  f".safetensors/.npz where torch is available.") from e
    return torch


def _load_error(path: Path, error: Exception) -> CheckpointFileError:
    """Why torch.load(weights_only=True) could not read `path`, in our words: for a file that pickles
    more than tensors, what was refused and how to convert it safely (torch's advice is to unpickle it)."""
    text = _ANSI.sub("", str(error))
    if "WeightsUnpickler error:" not in text:
        first_line = next((line for line in text.splitlines() if line.strip()), "no detail").split(". ")[0]
        return CheckpointFileError(f"{path}: not a readable PyTorch checkpoint (damaged, truncated or another "
                                   f"kind of file: {type(error).__name__}: {first_line})")
    lines = text.partition("WeightsUnpickler error:")[2].splitlines()
    detail = next((line.strip() for line in lines if line.strip()), "no detail").split(". ")[0]
    found = re.match(r"Unsupported global: GLOBAL ([\w.]+)", detail)
    what = f"{found.group(1)}, not only tensors" if found else f"more than tensors ({detail})"
    return CheckpointFileError(
        f"{path}: refused: it pickles {what}, and manet-jax loads tensors only (unpickling anything else can run "
        "code). Where you trust the file, load it with PyTorch, save the tensors alone with "
        "torch.save(checkpoint['state_dict'], 'weights.pth') and convert weights.pth")


def load_state_dict_file(path: str | Path) -> dict[str, np.ndarray]:
    """A state_dict from `.pth`/`.pth.tar` (torch.load with weights_only=True), `.safetensors` or `.npz`.

    Official `.pth.tar` files (a dict with `state_dict`) and DataParallel `module.` prefixes are
    unwrapped. Never runs pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointFileError(f"{path}: not a readable safetensors file ({e})") from e
    elif suffix == ".npz":
        check_npz(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CheckpointFileError(f"{path}: not a readable .npz file ({e})") from e
    elif suffix in TORCH_SUFFIXES:
        torch = _import_torch(path)
        try:
            with warnings.catch_warnings():  # torch's warnings about the file's pickle: refused below, in our words
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            raise _load_error(path, e) from None
    else:
        raise CheckpointFileError(f"{path}: unknown weight file type {suffix!r}; expected one of "
                                  f"{', '.join(TORCH_SUFFIXES)}, .safetensors, .npz")
    if not isinstance(raw, Mapping):
        raise CheckpointFileError(f"{path}: holds a {type(raw).__name__}, not a state_dict")
    try:
        return normalise_state_dict(raw)
    except ValueError as e:
        raise CheckpointFileError(f"{path}: {e}") from e


def check_npz(path: Path) -> None:
    """Raises CheckpointFileError unless `path` is a zip archive, as every .npz is (numpy would
    report another file as one holding pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise CheckpointFileError(f"{path}: not a readable .npz file: it is not a NumPy .npz archive (a zip of .npy "
                                  "arrays, as numpy.savez writes)")


def check_state_dict_file(path: str | Path) -> None:
    """A quick look at a weight file before it is loaded: raises CheckpointFileError naming it when
    it cannot be read, its type is unknown, or its first bytes are not those of its type (.npz and
    PyTorch's: a zip archive, or a pickle for PyTorch's older format; .safetensors: its header size)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    if suffix == ".npz":
        check_npz(path)
    elif suffix == ".safetensors":
        if len(head) < 8 or int.from_bytes(head, "little") > path.stat().st_size - 8:
            raise CheckpointFileError(f"{path}: not a readable safetensors file (no header of its size)")
    elif suffix in TORCH_SUFFIXES:
        if not (zipfile.is_zipfile(path) or head.startswith(b"\x80")):
            raise CheckpointFileError(f"{path}: not a PyTorch checkpoint (neither the zip archive torch.save writes "
                                      "nor its older pickle format)")
    else:
        raise CheckpointFileError(f"{path}: unknown weight file type {suffix!r}; expected one of "
                                  f"{', '.join(TORCH_SUFFIXES)}, .safetensors, .npz")


def check_state_dict_output(path: str | Path) -> None:
    """Raises CheckpointFileError unless `path` names a weight file type `save_state_dict_file`
    writes (and torch is there for PyTorch's), or OutputError where it cannot be written
    (`storage.check_outputs`; `save_state_dict_file` also checks the free space)."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".npz", *TORCH_SUFFIXES):
        raise CheckpointFileError(f"{path}: unknown output type {path.suffix.lower()!r}; use .pth, .safetensors "
                                  "or .npz")
    if path.suffix.lower() in TORCH_SUFFIXES:
        _import_torch(path)
    storage.check_outputs([storage.output(path)])


def save_state_dict_file(state_dict: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Writes a state_dict as `.pth` (torch.save of tensors), `.safetensors` or `.npz`, whole or not
    at all (`storage.writing`, after `check_state_dict_output`)."""
    path = Path(path)
    check_state_dict_output(path)
    suffix = path.suffix.lower()
    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}
    with storage.writing([storage.output(path)], sum(a.nbytes for a in arrays.values())) as (temporary,):
        if suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(temporary))
        elif suffix == ".npz":
            np.savez(str(temporary), **arrays)
        else:
            torch = _import_torch(path)
            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, str(temporary))
    return path
