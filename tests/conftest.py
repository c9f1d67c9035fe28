"""Shared test settings: CPU, tests/ importable, Ctrl-C delivered, one compilation cache for the
tests' subprocesses, the slowest modules first."""

import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gs:// through gcsfs, as the tools set it as they start (manet_jax.storage.configure): etils decides
# once per process, at its first path operation of any kind, so before any test makes one.
os.environ.update(EPATH_USE_TF="false", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
# FFmpeg quiet, as the tools set it as they start (manet_jax.cli.start_runtime): OpenCV reads it at its
# first use of FFmpeg, which in a test process may be a fixture writing a clip, before a tool starts.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
sys.path.insert(0, str(Path(__file__).parent))
# A suite started as a background job (`nohup`, `&` in a script) inherits an ignored SIGINT, which the
# tools rightly leave ignored; the Ctrl-C tests (in process and in the tools they start) need it
# delivered, as in a terminal. Python's handler here also gives the processes started later SIGINT's
# default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> Path:
    """The persistent compilation cache of the trainers and evaluators the tests start, shared by
    every module and by pytest-xdist's workers (whose temporary folders share a parent): the
    programs they have in common (the 64x64 train and eval steps) compile once per session."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "compilation_cache"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """A Cloud Storage emulator (tests/gcs_emulator.py) for the session, with this process's
    storage libraries pointed at it."""
    from gcs_emulator import Emulator, use_in_this_process

    server = Emulator(tmp_path_factory.mktemp("gcs"))
    server.start()
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_in_this_process(server, monkeypatch)
        yield server
    server.stop()


# The slowest modules, slowest first (a few minutes each on 2 cores): pytest-xdist's workers start
# with them and the quick modules fill in at the end, so that both workers finish together.
# test_train compiles the 64x64 steps into the shared compilation cache before test_train_parallel's
# one-device reference needs them.
SLOWEST = ["test_train.py", "test_model_parity.py", "test_train_parallel.py", "test_tpu_plan.py",
           "test_recipe_parity.py", "test_gcs.py", "test_train_stops.py", "test_predict.py", "test_predict_video.py", "test_export.py",
           "test_benchmark.py", "test_onnx.py", "test_serve.py", "test_convert.py", "test_evaluate.py",
           "test_signals.py", "test_compare.py", "test_align.py", "test_cli.py"]


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: modules in collection order, not most tests first
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST)))
