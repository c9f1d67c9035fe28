"""Shared test settings: CPU, tests/ importable, one compilation cache for the tests' subprocesses."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> Path:
    """The persistent compilation cache of the trainers and evaluators the tests start, shared by
    every module and by pytest-xdist's workers (whose temporary folders share a parent): the
    programs they have in common (the 64x64 train and eval steps) compile once per session."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "compilation_cache"
