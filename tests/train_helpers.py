"""Shared pieces of the trainer and evaluator tests: a tiny dataset, random weights, CLI runs.

Runs use MA-Net at 64x64 on 32 training and 20 test images, start from a converted checkpoint of
random weights (so no process compiles the model's initialiser) and share a persistent
compilation cache, so each program compiles once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from manet_jax.checkpoints import save_variables
from manet_jax.data import pipeline
from manet_jax.models import MANet

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic_faces/64_32_20"  # 32 train / 20 test images, 64x64
TEST_LABEL_COUNTS = [3, 3, 3, 3, 3, 3, 2]  # the test split's labels are index % 7
STEPS_PER_EPOCH, EPOCHS = 4, 3  # batch 8


def random_variables(num_classes: int = 7, seed: int = 0) -> dict:
    """He-initialised MANet variables drawn with NumPy: no XLA compilation of `model.init`."""
    shapes = jax.eval_shape(MANet(num_classes).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
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


def make_checkpoint(directory: Path, num_classes: int = 7) -> Path:
    return save_variables(directory, random_variables(num_classes), num_classes=num_classes, source="test weights")


def train_command(workdir: Path, data_dir: Path, init_from: Path, *overrides: str) -> list[str]:
    """`python -m manet_jax.train` on the tiny dataset: 3 epochs of 4 steps, a report every step."""
    settings = {"dataset": DATASET, "data_dir": data_dir, "image_size": 64, "init_from": init_from,
                "num_epochs": EPOCHS, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 0.01,
                "lr_step_epochs": 2, "log_every_steps": 1}
    return [sys.executable, "-m", "manet_jax.train", "--config=configs/demo.py", f"--workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in settings.items()), *overrides]


def environment(cache_dir: Path, num_devices: int = 1) -> dict[str, str]:
    """Subprocess environment: CPU with `num_devices` devices, a shared compilation cache."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(num_devices),
            "JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


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


def mesh_runs(data_dir: str, init_from: str, device_counts: list[int], steps: int) -> dict[int, dict]:
    """The first `steps` train steps of the `train_command` run on meshes of the first n devices
    of this process, for each n in `device_counts`: {n: {'losses', 'update_error'}}, where
    update_error is the relative L2 distance of the first step's parameter update to that on
    device_counts[0]."""
    from manet_jax.checkpoints import load_variables
    from manet_jax.optim import sgd, step_lr
    from manet_jax.training.config import load_config
    from manet_jax.training.sharding import make_mesh, prefetch_to_device
    from manet_jax.training.state import create_train_state
    from manet_jax.training.steps import make_train_step

    config = load_config(str(REPO / "configs/demo.py"), [
        arg.removeprefix("--config.") for arg in train_command(Path(), data_dir, init_from)
        if arg.startswith("--config.")])
    variables, _ = load_variables(init_from)
    initial = np.concatenate([x.ravel() for x in jax.tree.leaves(variables["params"])])
    optimizer = sgd(step_lr(config.learning_rate, STEPS_PER_EPOCH, config.lr_step_epochs, config.lr_gamma))
    runs, reference_update = {}, None
    for n in device_counts:
        mesh = make_mesh(jax.devices()[:n])
        state = create_train_state(variables, optimizer, jax.random.split(jax.random.key(config.seed))[1], mesh)
        batches = prefetch_to_device(pipeline.train_iterator(
            config.dataset, data_dir, image_size=config.image_size, global_batch_size=config.batch_size,
            seed=config.seed, crop_scale=tuple(config.crop_scale), crop_ratio=tuple(config.crop_ratio),
            flip_prob=config.flip_prob), mesh)
        train_step = make_train_step(MANet(7), optimizer, mesh)
        losses = []
        for step in range(steps):
            state, metrics = train_step(state, next(batches))
            losses.append(float(metrics["loss"]))
            if step == 0:
                update = np.concatenate([x.ravel() for x in jax.tree.leaves(jax.device_get(state.params))]) - initial
                reference_update = update if reference_update is None else reference_update
        runs[n] = {"losses": losses, "update_error": float(np.linalg.norm(update - reference_update)
                                                            / np.linalg.norm(reference_update))}
    return runs
