"""Shared pieces of the trainer and evaluator tests: a tiny dataset, random weights, CLI runs.

Runs use MA-Net at 64x64 on 32 training and 20 test images, start from a converted checkpoint of
random weights (so no process compiles the model's initialiser) and share a persistent
compilation cache, so each program compiles once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
import pytest

from manet_jax.bundle import ModelSpec, default_class_names, save_bundle
from manet_jax.data import pipeline
from manet_jax.models import variable_shapes

REPO = Path(__file__).resolve().parents[1]
TF_STARTUP = Path(__file__).resolve().parent / "tf_startup"  # TensorFlow's start-up lines on any CPU
DATASET = "synthetic_faces/64_32_20"  # 32 train / 20 test images, 64x64
TEST_LABEL_COUNTS = [3, 3, 3, 3, 3, 3, 2]  # the test split's labels are index % 7
STEPS_PER_EPOCH, EPOCHS = 4, 3  # batch 8


def random_variables(num_classes: int = 7, seed: int = 0) -> dict:
    """He-initialised MANet variables drawn with NumPy: no XLA compilation of `model.init`."""
    shapes = variable_shapes(num_classes)
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":  # convolutions: Kaiming fan-out; linear layers: PyTorch's default variance
            conv = len(leaf.shape) >= 4  # (kh, kw, in, out) or (in, out); the local branches add an axis of 4
            fan = leaf.shape[-4] * leaf.shape[-3] * leaf.shape[-1] if conv else 6 * leaf.shape[-2]
            return rng.normal(0.0, np.sqrt(2.0 / fan), leaf.shape).astype(leaf.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_dataset(data_dir: Path) -> None:
    pipeline.dataset_info(DATASET, str(data_dir))


def make_checkpoint(directory: Path, num_classes: int = 7, **spec) -> Path:
    """A model bundle of `random_variables` (at 64x64 unless `spec` says otherwise)."""
    spec = ModelSpec(default_class_names(num_classes), **{"image_size": 64, "source": "test weights", **spec})
    return save_bundle(directory, random_variables(num_classes), spec)


def train_command(workdir: Path, data_dir: Path, init_from: Path, *overrides: str) -> list[str]:
    """`python -m manet_jax.train` on the tiny dataset: 3 epochs of 4 steps, a report every step."""
    settings = {"dataset": DATASET, "data_dir": data_dir, "image_size": 64, "init_from": init_from,
                "num_epochs": EPOCHS, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 0.01,
                "lr_schedule": "step", "lr_step_epochs": 2, "log_every_steps": 1}
    return [sys.executable, "-m", "manet_jax.train", "--config", "configs/demo.py", "--workdir", str(workdir),
            *(f"--config.{key}={value}" for key, value in settings.items()), *overrides]


def trainer_setup(root: Path, cache_dir: Path) -> dict:
    """The tiny dataset and a random-weights checkpoint under `root`, and the runs' environment."""
    make_dataset(root / "data")
    return {"root": root, "data_dir": root / "data", "init_from": make_checkpoint(root / "init"),
            "env": environment(cache_dir)}


def command(setup: dict, workdir: Path, *overrides: str) -> list[str]:
    """`train_command` on a `trainer_setup`'s dataset and checkpoint."""
    return train_command(workdir, setup["data_dir"], setup["init_from"], *overrides)


def environment(cache_dir: Path, num_devices: int = 1) -> dict[str, str]:
    """Subprocess environment: CPU with `num_devices` devices, a shared compilation cache, and
    TensorFlow's settings left to the tools, its start-up lines printed on any CPU (tf_startup/)."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    return {**environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(num_devices),
            "JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TF_STARTUP), os.environ.get("PYTHONPATH")]))}


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def run_timing_exit(command: list[str], env: dict[str, str], timeout: float = 600,
                    on_line: Callable[[str, subprocess.Popen], None] | None = None) -> tuple[int, str, float]:
    """Runs `command`, calling `on_line(line, process)` on each output line; (exit code, output,
    seconds from its last output line to its exit)."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines, last = [], time.monotonic()
    try:
        for line in process.stdout:
            lines.append(line)
            last = time.monotonic()
            if on_line:
                on_line(line, process)
        code = process.wait(timeout)
        return code, "".join(lines), time.monotonic() - last
    finally:
        process.kill()


def run_and_signal(command: list[str], env: dict[str, str], when: Callable[[str], bool], signum: signal.Signals,
                   timeout: float = 600) -> tuple[int, str]:
    """Runs `command`, sends `signum` once an output line satisfies `when`; (exit code, output)."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines, sent = [], False
    try:
        for line in process.stdout:
            lines.append(line)
            if not sent and when(line):
                process.send_signal(signum)
                sent = True
        return process.wait(timeout), "".join(lines)
    finally:
        process.kill()


def one_device_steps(data_dir: str, init_from: str, overrides: list[str], steps: int, output: str) -> list[float]:
    """The first `steps` train steps of the `train_command` run with `overrides` on one device, set
    up as the trainer does (`build.build`): their losses; the parameters after the first step are
    saved to `output` (`flat_params`)."""
    from manet_jax.training.build import build
    from manet_jax.training.config import load_config

    config = load_config(str(REPO / "configs/demo.py"), [
        arg.removeprefix("--config.") for arg in train_command(Path(), data_dir, init_from, *overrides)
        if arg.startswith("--config.")])
    setup = build(config)  # on every device: run with one
    state, batches = setup.initial_state(), setup.train_batches()
    losses = []
    for step in range(steps):
        state, metrics = setup.train_step(state, next(batches))
        losses.append(float(metrics["loss"]))
        if step == 0:
            np.save(output, flat_params(jax.device_get(state.variables)))
    return losses


def flat_params(variables: dict) -> np.ndarray:
    """A model's parameters as one vector."""
    return np.concatenate([x.ravel() for x in jax.tree.leaves(variables["params"])])


@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """`directory`, a tmpfs mounted with `options` ('size=32k', 'ro,size=1m') for the `with` block; a
    test skip unless run as root (as root, permission bits stop no write: a read-only mount does)."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"a small or read-only disk needs a tmpfs mounted as root: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)
