"""Importing the official PyTorch MA-Net from a local clone of its repository (needs torch only)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from manet_jax.convert.core import HEAD_LAYERS
from manet_jax.errors import ManetError


class ReferenceModelError(ManetError):
    """The given path does not hold a usable MA-Net reference; the message says what is wrong."""


@contextlib.contextmanager
def _model_package(repo: Path) -> Iterator[None]:
    """Makes `<repo>/model` importable as package `model` for the duration, then restores sys.modules."""
    def owned(name: str) -> bool:
        return name == "model" or name.startswith("model.")

    saved_modules = {name: sys.modules.pop(name) for name in list(sys.modules) if owned(name)}
    saved_path = list(sys.path)
    package_dir = repo / "model"
    init = package_dir / "__init__.py"
    try:
        sys.path.insert(0, str(repo))
        importlib.invalidate_caches()
        if init.is_file():
            spec = importlib.util.spec_from_file_location("model", init,
                                                          submodule_search_locations=[str(package_dir)])
            sys.modules["model"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules["model"])
        else:
            sys.modules["model"] = ModuleType("model")
            sys.modules["model"].__path__ = [str(package_dir)]
        yield
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if owned(name)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)


def load_reference(repo: str | Path) -> ModuleType:
    """The module `<repo>/model/manet.py` (imported as `model.manet`), checked to define `MANet`."""
    repo = Path(repo).expanduser().resolve()
    source = repo / "model" / "manet.py"
    if not repo.is_dir():
        raise ReferenceModelError(f"--reference-repo {repo}: no such directory")
    if not source.is_file():
        raise ReferenceModelError(f"--reference-repo {repo} does not hold the MA-Net reference: {source} does not exist "
                           "(expected a clone of github.com/zengqunzhao/MA-Net, with model/manet.py)")
    try:
        with _model_package(repo):
            module = importlib.import_module("model.manet")
    except Exception as e:
        frames = [frame for frame in traceback.extract_tb(e.__traceback__)
                  if Path(frame.filename).is_relative_to(repo)]
        details = "".join(traceback.format_list(frames) + traceback.format_exception_only(e)).rstrip()
        raise ReferenceModelError(f"importing the reference {source} failed:\n{details}") from e
    if not isinstance(getattr(module, "MANet", None), type):
        raise ReferenceModelError(f"{source} defines no class MANet: not the MA-Net reference")
    return module


def build_reference(module: ModuleType, num_classes: int) -> Any:
    """The reference model with `num_classes`-way heads, built as the official training script does.

    With a `manet()` factory (the official repository's): the pre-training model, whose heads
    are replaced by fresh `Linear(512, num_classes)`; otherwise `MANet(num_classes=num_classes)`.
    """
    import torch

    factory = getattr(module, "manet", None)
    if not callable(factory):
        return module.MANet(num_classes=num_classes)
    model = factory()
    for head in HEAD_LAYERS:
        layer = getattr(model, head)
        if layer.out_features != num_classes:
            setattr(model, head, torch.nn.Linear(layer.in_features, num_classes))
    return model


