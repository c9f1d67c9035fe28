"""The plan of a training run on a Cloud TPU slice, made on a machine without a TPU.

`make_plan(config, 'v5p-32')` sets the run up exactly as the trainer does (`build.build`) on a
mesh of the slice's devices, with the dataset's classes and split sizes as published, and
compiles its train and eval steps ahead of time for that slice. The compiled programs tell what
a chip holds (HBM), computes (FLOPs, bytes) and exchanges (collectives) per step; with the chips'
data sheet (`manet_jax.accelerators`) they bound the step time from below, whichever of compute,
HBM, ICI or DCN takes longest if the others overlap with it perfectly: the roofline, an upper
bound on speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from manet_jax.accelerators import Chip, chip
from manet_jax.data import pipeline
from manet_jax.data.registry import SPLIT_NOTES
from manet_jax.errors import ConfigError, ManetError
from manet_jax.mesh import INDEX, MASK, batch_sharded, make_mesh, replicated
from manet_jax.models import model_flops
from manet_jax.tpu.collectives import DCN, Collective, collectives
from manet_jax.tpu.slices import hosts, slice_devices, slice_type
from manet_jax.training.build import EvalSet, Setup, build

STEPS = ("train", "eval")
MIN_DEVICE_BATCH = 8  # below it per-step costs (the gradient all-reduce) weigh on few images
MEMORY = ("argument", "output", "alias", "temp", "generated_code", "peak")  # memory_analysis() fields
GIB = 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OUT_OF_HBM = re.compile(r"required[^(]*\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)")


class DoesNotFitError(ManetError):
    """A step does not fit in a chip's HBM at the configured batch size."""


class OutOfHbmError(Exception):
    """The compiler ran out of HBM: `required` bytes per chip, `available` bytes."""

    def __init__(self, required: int, available: int):
        super().__init__(f"needs {required / GIB:.2f} GiB of HBM per chip, {available / GIB:.2f} GiB available")
        self.required, self.available = required, available


@dataclasses.dataclass
class StepPlan:
    """One compiled step: per device (= chip) and step unless said otherwise."""

    mode: str  # 'train' or 'eval'
    global_batch: int
    device_batch: int
    lower_s: float
    compile_s: float
    memory: dict[str, int]  # bytes, MEMORY fields; 'peak' is what the compiler checks against HBM
    flops: float
    bytes_accessed: float
    model_flops: float  # the model's analytic count (models.model_flops) for the same images
    collectives: dict[str, Collective]
    seconds: dict[str, float]  # lower bounds of the step time: compute, hbm, ici, dcn

    @property
    def step_s(self) -> float:
        return max(self.seconds.values())

    @property
    def bound(self) -> str:
        """What the roofline step time is bound by."""
        return max(self.seconds, key=self.seconds.get)

    @property
    def images_per_s(self) -> float:
        """Per device (chip), at the roofline."""
        return self.device_batch / self.step_s


@dataclasses.dataclass
class Plan:
    accelerator: str  # Cloud's name, e.g. 'v5p-32'
    num_slices: int
    topology: str  # libtpu's, e.g. 'v5p:2x2x4'
    device_kind: str
    chip: Chip  # its data sheet, which the roofline uses
    devices: int  # over all slices; one per chip
    hosts: int
    devices_per_host: int
    usable_hbm_gib: float  # what one program may use per chip (or --hbm-limit)
    dataset: str
    splits: dict[str, int]  # as published; {} unknown
    splits_note: str
    train_examples: int | None
    eval_set: str  # '<dataset>/<split>': the first eval set of the config
    eval_examples: int | None  # its size as published; None unknown
    image_size: int
    dtype: str
    branch_execution: str
    input_images_per_core_s: float
    steps: dict[str, StepPlan]
    warnings: list[str]

    def epoch_s(self) -> dict[str, float | None]:
        """Roofline seconds of a training epoch and of an evaluation of the eval set."""
        eval_examples = self.eval_examples
        out: dict[str, float | None] = {"train": None, "eval": None}
        if self.train_examples and "train" in self.steps:
            out["train"] = math.ceil(self.train_examples / self.steps["train"].global_batch) * self.steps["train"].step_s
        if eval_examples and "eval" in self.steps:
            out["eval"] = math.ceil(eval_examples / self.steps["eval"].global_batch) * self.steps["eval"].step_s
        return out

    def host_input(self) -> tuple[float, float] | None:
        """(training images/s each host's input pipeline must deliver at the roofline, CPU cores
        that takes at `input_images_per_core_s`)."""
        if "train" not in self.steps:
            return None
        rate = self.steps["train"].images_per_s * self.devices_per_host
        return rate, rate / self.input_images_per_core_s


@contextlib.contextmanager
def compilation_cache_off() -> Iterator[None]:
    """JAX's persistent compilation cache off for the block (compile-only programs cannot be read
    back), then as it was."""
    caching = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", caching)


def make_plan(config: ml_collections.ConfigDict, accelerator: str, num_slices: int = 1,
              steps: Sequence[str] = STEPS, train_examples: int | None = None, hbm_limit_gib: float | None = None,
              input_images_per_core_s: float = 1.0, log=print) -> Plan:
    """Compiles the run of `config` for `num_slices` slices of TPU type `accelerator` and plans it;
    `log` gets progress lines. Raises ConfigError (before compiling) when the config cannot run
    there, DoesNotFitError when a step does not fit in HBM (`hbm_limit_gib`: the chip's usable HBM
    unless given)."""
    cloud_name, kind = slice_type(accelerator)
    unknown = sorted(set(steps) - set(STEPS))
    if unknown or not steps:
        raise ConfigError(f"--steps must name {' and/or '.join(STEPS)}, got {','.join(steps)}")
    devices = slice_devices(cloud_name, num_slices)
    with compilation_cache_off():
        mesh = make_mesh(devices)
        by_host = hosts(devices)
        found = chip(devices[0].device_kind)
        usable = hbm_limit_gib or found.usable_hbm_gib
        info = pipeline.published_info(config.dataset)
        published = dict(info.splits)
        warnings = []
        known = train_examples or info.splits.get(info.train_split)
        if not known:
            warnings.append(f"the size of {config.dataset}'s {info.train_split} split is not known without the data "
                            f"(pass --train-examples N): no epoch time")

        def planned_info(name: str, data_dir: str | None) -> pipeline.DatasetInfo:
            """Published sizes; a train or eval split of unknown size counts one batch (the learning-rate
            steps and the eval sets need a size, the programs' cost does not)."""
            published_info = pipeline.published_info(name)
            splits = dict(published_info.splits)
            for split in (published_info.train_split, published_info.eval_split):
                if split:
                    splits.setdefault(split, config.batch_size)
            if name == config.dataset:
                splits[published_info.train_split] = known or config.batch_size
            return dataclasses.replace(published_info, splits=splits)

        def published_size(eval_set: EvalSet) -> int | None:
            return pipeline.published_info(eval_set.info.name).splits.get(eval_set.split)

        setup = build(config, mesh, planned_info)
        device_batch = config.batch_size // mesh.size
        if device_batch < MIN_DEVICE_BATCH:
            warnings.append(
                f"{device_batch} image(s) per device: each step's fixed costs (the gradient all-reduce, "
                f"launching the program) are shared by few images, and a TPU core fills its matrix units from "
                f"batch x pixels; use a batch of at least {MIN_DEVICE_BATCH * mesh.size} ({MIN_DEVICE_BATCH} per "
                f"device). BatchNorm statistics are over the global batch of {config.batch_size} either way.")
        log(f"{cloud_name}{f' x {num_slices} slices' if num_slices > 1 else ''}: {mesh.size} x "
            f"{devices[0].device_kind} on {len(by_host)} host(s); {config.dataset} {config.image_size}x"
            f"{config.image_size} {config.dtype}, batch {config.batch_size} ({device_batch} per device), "
            f"{setup.model.branch_execution} local branches")
        plans = {}
        for mode in steps:
            batch = config.batch_size if mode == "train" else setup.eval_batch_size
            log(f"compiling the {mode} step (batch {batch}) ...")
            plans[mode] = _plan_step(setup, mode, batch, found, usable, by_host, num_slices, warnings)
        return Plan(accelerator=cloud_name, num_slices=num_slices, topology=kind.topology,
                    device_kind=devices[0].device_kind, chip=found, devices=mesh.size, hosts=len(by_host),
                    devices_per_host=mesh.size // len(by_host), usable_hbm_gib=usable, dataset=config.dataset,
                    splits=published, splits_note=SPLIT_NOTES.get(config.dataset, ""),
                    train_examples=known, eval_set=setup.eval_sets[0].name,
                    eval_examples=published_size(setup.eval_sets[0]), image_size=config.image_size, dtype=config.dtype,
                    branch_execution=setup.model.branch_execution, input_images_per_core_s=input_images_per_core_s,
                    steps=plans, warnings=warnings)


def abstract_batch(setup: Setup, mode: str, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of a global batch as the input pipeline makes them."""
    size, sharding = setup.config.image_size, batch_sharded(setup.mesh)
    batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32, sharding=sharding),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}
    if mode == "eval":
        batch[MASK] = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=sharding)
        batch[INDEX] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)
    return batch


def lower_step(setup: Setup, mode: str, batch_size: int) -> jax.stages.Lowered:
    """The run's train or eval step lowered for a global batch of `batch_size` on its mesh."""
    state = setup.abstract_state()
    if mode == "train":
        return setup.train_step.lower(state, abstract_batch(setup, mode, batch_size))
    classes = jax.ShapeDtypeStruct((setup.model.num_classes,), jnp.bool_, sharding=replicated(setup.mesh))
    return setup.eval_step.lower(state.variables, abstract_batch(setup, mode, batch_size), classes)


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """`lowered.compile()`; OutOfHbmError when the compiler finds it does not fit in HBM."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        match = _OUT_OF_HBM.search(str(e))
        if not match:
            raise
        required, unit, available, available_unit = match.groups()
        raise OutOfHbmError(int(float(required) * _UNITS[unit]),
                            int(float(available) * _UNITS[available_unit])) from None


def _plan_step(setup: Setup, mode: str, batch_size: int, found: Chip, usable_gib: float,
               by_host: dict, num_slices: int, warnings: list[str]) -> StepPlan:
    mesh = setup.mesh
    start = time.perf_counter()
    lowered = lower_step(setup, mode, batch_size)
    lowered_at = time.perf_counter()
    try:
        compiled = compile_lowered(lowered)
        peak = compiled.memory_analysis().peak_memory_in_bytes
    except OutOfHbmError as e:
        compiled, peak = None, e.required
    compiled_at = time.perf_counter()
    if compiled is None or peak > usable_gib * GIB:
        raise DoesNotFitError(_does_not_fit(setup, mode, batch_size, peak, usable_gib))
    analysis = compiled.memory_analysis()
    memory = {name: int(getattr(analysis, f"{name}_size_in_bytes" if name != "peak" else "peak_memory_in_bytes"))
              for name in MEMORY}
    cost = compiled.cost_analysis()
    found_collectives = collectives(compiled.as_text(), mesh.size)
    device_batch = batch_size // mesh.size
    seconds = {"compute": cost["flops"] / (found.peak_tflops[setup.config.dtype != "bfloat16"] * 1e12),
               "hbm": cost["bytes accessed"] / (found.hbm_gb_s * 1e9),
               "ici": sum(c.sent_bytes for k, c in found_collectives.items() if k != DCN) / (found.ici_gb_s / 2 * 1e9)}
    if DCN in found_collectives:
        if found.dcn_gb_s:
            seconds["dcn"] = found_collectives[DCN].sent_bytes / (found.dcn_gb_s * 1e9)
        else:
            warnings.append(f"{mode} step: the data-center network's bandwidth of {mesh.devices.flat[0].device_kind} "
                            f"is not known; the roofline leaves out the transfer between slices")
    return StepPlan(mode=mode, global_batch=batch_size, device_batch=device_batch,
                    lower_s=lowered_at - start, compile_s=compiled_at - lowered_at, memory=memory,
                    flops=cost["flops"], bytes_accessed=cost["bytes accessed"],
                    model_flops=model_flops(mode, device_batch, setup.config.image_size),
                    collectives=found_collectives, seconds=seconds)


def _does_not_fit(setup: Setup, mode: str, batch_size: int, peak: int, usable_gib: float) -> str:
    """The message for a step that needs `peak` bytes per chip at `batch_size`, with the largest
    batch that fits: memory is linear in the batch between two compiles (a second, smaller one)."""
    devices, usable = setup.mesh.size, usable_gib * GIB
    device_batch = batch_size // devices
    smaller = max(1, device_batch // 8)
    try:
        smaller_peak = compile_lowered(lower_step(setup, mode, smaller * devices)).memory_analysis().peak_memory_in_bytes
    except OutOfHbmError as e:
        smaller_peak = e.required
    per_image = (peak - smaller_peak) / max(device_batch - smaller, 1)
    fixed = smaller_peak - smaller * per_image
    largest = int((usable - fixed) // per_image) if per_image > 0 else 0
    key = "config.batch_size" if mode == "train" else "config.eval_batch_size"
    message = (f"the {mode} step does not fit: at {key}={batch_size} ({device_batch} per device) it needs "
               f"{peak / GIB:.2f} GiB of HBM per chip, and {setup.mesh.devices.flat[0].device_kind} has "
               f"{usable_gib:.2f} GiB")
    if largest < 1:
        return f"{message}; not even one image per device fits ({fixed / GIB:.2f} GiB without images)"
    return (f"{message}; the largest batch that fits is about {largest * devices} ({largest} per device; "
            f"{per_image / 2**20:.1f} MiB per image above {fixed / GIB:.2f} GiB, from a second compile "
            f"at {smaller} per device)")
