"""The TPU plan: the trainer's steps compiled for Cloud TPU slices on this CPU-only machine.

libtpu (the `tpu` extra) compiles for TPU topologies without a TPU. Each compile takes a minute or
two on 2 cores, so the steps compile once per slice (module fixtures), at 64x64.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from manet_jax import accelerators
from manet_jax.data import pipeline, sampling
from manet_jax.errors import ConfigError
from manet_jax.mesh import batch_sharded, make_mesh
from manet_jax.models import MANet, model_flops
from manet_jax.training.build import build
from manet_jax.training.config import load_config

pytest.importorskip("libtpu", reason="needs libtpu: pip install -e '.[tpu]'")

from manet_jax import tpu_plan  # noqa: E402
from manet_jax.tpu import compiled_steps  # noqa: E402
from manet_jax.tpu import collectives as collectives_lib  # noqa: E402
from manet_jax.tpu.slices import SLICE_TYPES, hosts, slice_devices  # noqa: E402
from train_helpers import tmpfs  # noqa: E402

SIZE = 64
FLOPS_TOLERANCE = 0.2  # XLA's count within 20% of the model's (3x forward for training; measured 0.87-1.03x)
NUM_PARAMS = 50_547_214  # MA-Net, 7 classes
GIB = 2**30


def config(batch_size: int, *overrides: str):
    return load_config("configs/raf.py", [f"image_size={SIZE}", f"batch_size={batch_size}", "dtype=bfloat16",
                                          *overrides])


@pytest.fixture(scope="module")
def single():
    """v5litepod-4: 4 chips, one host; both steps."""
    return compiled_steps.make_plan(config(32), "v5litepod-4", log=lambda line: None)


@pytest.fixture(scope="module")
def two_slices():
    """Two v5litepod-4 slices over the data-center network: 8 chips on 2 hosts; the train step."""
    return compiled_steps.make_plan(config(64), "v5e-4", num_slices=2, steps=("train",), log=lambda line: None)


@pytest.mark.slow  # the steps compiled for a TPU slice (module fixture)
def test_the_steps_compile_and_fit_on_a_slice(single):
    assert (single.accelerator, single.topology, single.devices, single.hosts) == ("v5litepod-4", "v5e:2x2", 4, 1)
    assert single.branch_execution == "vmap" and single.warnings == []
    for mode in ("train", "eval"):
        step = single.steps[mode]
        assert (step.global_batch, step.device_batch) == (32, 8)
        assert 0 < step.memory["peak"] < single.usable_hbm_gib * GIB
        assert step.memory["argument"] >= 4 * NUM_PARAMS  # float32 parameters on every chip
        assert step.step_s > 0 and step.bound in step.seconds
    train = single.steps["train"]
    assert train.memory["alias"] >= 8 * NUM_PARAMS  # parameters and momentum donated, updated in place
    assert single.host_input()[0] == pytest.approx(4 * train.images_per_s)


@pytest.mark.slow  # the steps compiled for a TPU slice (module fixture)
def test_flops_agree_with_the_models_count(single):
    for mode, step in single.steps.items():
        assert step.model_flops == model_flops(mode, 8, SIZE)
        assert abs(step.flops / step.model_flops - 1) < FLOPS_TOLERANCE, mode


@pytest.mark.slow  # the steps compiled for a TPU slice (module fixture)
def test_the_train_step_all_reduces_gradients_and_batch_statistics_and_gathers_nothing(single):
    found = single.steps["train"].collectives
    assert set(found) == {"all-reduce"}  # no all-gather, reduce-scatter or all-to-all: parameters stay put
    all_reduce = found["all-reduce"]
    assert all_reduce.group_sizes == {4: all_reduce.count}  # over the 'data' axis, all devices
    assert 2 * NUM_PARAMS <= all_reduce.bytes <= 4 * NUM_PARAMS + 2**20  # the gradients, bfloat16 or float32
    variables = jax.eval_shape(MANet(7).init, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    batch_norms = sum(path[-1].key == "mean" for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]))
    assert all_reduce.count > batch_norms  # each BatchNorm's batch statistics (and their gradients), then the rest
    assert single.steps["eval"].collectives["all-reduce"].bytes < 2**10  # eval sums metrics only


@pytest.mark.slow  # the train step compiled for two TPU slices
def test_two_slices_reduce_within_each_slice_then_across(two_slices):
    assert (two_slices.devices, two_slices.hosts, two_slices.devices_per_host) == (8, 2, 4)
    found = two_slices.steps["train"].collectives
    assert set(found) >= {"all-reduce", collectives_lib.DCN}
    assert {size for kind, c in found.items() for size in c.group_sizes} == {4}  # ICI: within a slice
    reduced = sum(c.bytes for kind, c in found.items() if kind in ("all-reduce", "reduce-scatter"))
    assert 2 * NUM_PARAMS <= reduced
    assert found[collectives_lib.DCN].bytes < 0.3 * reduced  # across slices: each chip's share only
    assert "dcn" in two_slices.steps["train"].seconds


@pytest.mark.parametrize("name, num_slices", [("v5litepod-16", 1), ("v4-32", 1), ("v5litepod-4", 2)])
def test_each_host_holds_the_rows_it_feeds(name, num_slices):
    """Whatever order the runtime lists the devices in, each host's devices hold the contiguous rows
    of the global batch that its input pipeline reads (sampling.local_rows), in host order."""
    devices = slice_devices(name, num_slices)
    batch = 8 * len(devices)
    for order in (devices, sorted(devices, key=lambda d: d.id), devices[::-1]):
        indices = batch_sharded(make_mesh(order)).devices_indices_map((batch,))
        by_host = hosts(order)
        for process, local in by_host.items():
            rows = sorted(r for d in local for r in range(*indices[d][0].indices(batch)))
            assert rows == sampling.local_rows(0, batch, process, len(by_host)).tolist()


def test_branch_execution_follows_the_mesh_not_the_tracing_host():
    """Traced here on a CPU, the step compiled for a TPU runs the local branches vmapped (one
    grouped convolution for the four), the one for a CPU unrolled."""
    programs = {}
    for mesh in (make_mesh(slice_devices("v5litepod-4")), make_mesh(jax.devices("cpu")[:1])):
        setup = build(config(4 * mesh.size, "image_size=32"), mesh, lambda name, _: pipeline.published_info(name))
        programs[setup.model.branch_execution] = compiled_steps.lower_step(setup, "eval", 4 * mesh.size).as_text()
    assert set(programs) == {"vmap", "unrolled"}
    assert "feature_group_count = 4" in programs["vmap"]
    assert "feature_group_count = 4" not in programs["unrolled"]


def test_usable_hbm_is_what_the_compiler_allows():
    """A program over HBM fails to compile with the chip's usable HBM in the message."""
    for name in ("v4-8", "v5litepod-4", "v5p-8", "v6e-4"):
        device = slice_devices(name)[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        lowered = jax.jit(lambda: jax.numpy.zeros((2**38,)), out_shardings=sharding).lower()
        with pytest.raises(compiled_steps.OutOfHbmError) as raised:
            compiled_steps.compile_lowered(lowered)
        assert raised.value.required == 2**40
        assert raised.value.available == pytest.approx(accelerators.chip(device.device_kind).usable_hbm_gib * GIB)


def test_every_slice_type_has_its_chips_and_hosts():
    for name, kind in SLICE_TYPES.items():
        chips = int(np.prod([int(n) for n in kind.topology.split(":")[1].split("x")]))
        per_host = int(np.prod(kind.host_bounds))
        devices = slice_devices(name)
        assert len(devices) == chips and len(hosts(devices)) == chips // per_host, name
        assert chips == int(name.split("-")[1]) // (2 if kind.chip_config == "megacore" else 1), name


@pytest.mark.slow  # the steps compiled for a TPU slice (module fixture)
def test_a_step_that_does_not_fit_names_the_largest_batch_that_does(single):
    """Against a limit just above the eval step's peak at 8 images per device, 64 do not fit;
    the largest batch that does is read off a second compile at 8."""
    peak = single.steps["eval"].memory["peak"]
    with pytest.raises(compiled_steps.DoesNotFitError) as raised:
        compiled_steps.make_plan(config(256), "v5litepod-4", steps=("eval",), hbm_limit_gib=(peak + 4 * 2**20) / GIB,
                                 log=lambda line: None)
    message = str(raised.value)
    assert "the eval step does not fit: at config.eval_batch_size=256 (64 per device)" in message
    largest = int(message.split("the largest batch that fits is about ")[1].split(" ")[0])
    assert 32 < largest < 256 and largest % 4 == 0, message


@pytest.mark.slow  # the steps compiled for a TPU slice (module fixture)
def test_the_report_and_json(single, tmp_path):
    text = tpu_plan.report(single)
    assert "v5litepod-4: 4 x TPU v5 lite (v5e:2x2), 1 host(s) of 4 device(s)" in text
    assert "images/s per chip (upper bound)" in text and "  train: " in text and "all-reduce" in text
    payload = json.loads(json.dumps(tpu_plan.to_json(single)))
    train = payload["steps"]["train"]
    assert train["images_per_s_per_chip"] == pytest.approx(single.steps["train"].images_per_s)
    assert payload["epoch_s"]["train"] == pytest.approx(np.ceil(12271 / 32) * single.steps["train"].step_s)


def test_errors_before_compiling(capsys):
    with pytest.raises(ConfigError, match=r"config.batch_size=30 must be a multiple of the number of devices \(4: 1"):
        compiled_steps.make_plan(config(30), "v5litepod-4")
    assert tpu_plan.main(["--config", "configs/raf.py", "--topology", "v5x-8"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: unknown TPU type 'v5x-8'; known: v4-8, v4-16,") and "v6e-256" in error


def test_an_output_that_cannot_be_written_is_named_before_compiling(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        cases = {tmp_path: "is a directory, not a file",
                 read_only / "plan.json": rf"cannot be written: {read_only} is read-only \(a read-only file system or "
                                          r"no write permission\)"}
        for output, problem in cases.items():
            assert tpu_plan.main(["--config", "configs/raf.py", "--topology", "v5p-8", "--output", str(output)]) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(rf"error: --output {re.escape(str(output))}: {problem}\n", err), err


def test_the_plan_leaves_the_compilation_cache_as_it_found_it():
    """The plan turns JAX's persistent compilation cache off (programs compiled for a TPU without
    one cannot be read back), and puts it back as it was, also when the plan fails."""
    before = jax.config.jax_enable_compilation_cache
    try:
        for caching in (True, False):
            jax.config.update("jax_enable_compilation_cache", caching)
            with pytest.raises(ConfigError, match="config.batch_size=30"):
                compiled_steps.make_plan(config(30), "v5litepod-4")
            assert jax.config.jax_enable_compilation_cache is caching
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


@pytest.mark.slow  # a process
def test_without_libtpu_the_plan_says_how_to_install_it():
    code = ("import sys; sys.modules['libtpu'] = None; from manet_jax import tpu_plan; "
            "sys.exit(tpu_plan.main(['--config', 'configs/raf.py', '--topology', 'v5p-8']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: compiling for a TPU needs libtpu, which is not installed: pip install -e '.[tpu]'")


@pytest.mark.slow  # a process
def test_tools_start_quietly_with_libtpu_installed_and_no_tpu():
    """JAX probes libtpu when it starts; on this machine without a TPU nothing is logged."""
    code = "import jax; from manet_jax import cli; cli.run(lambda: print(jax.devices()[0].platform))"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JAX_PLATFORMS", "TPU_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "cpu\n", "")


def test_the_plan_records_the_libtpu_it_loads(tmp_path, monkeypatch):
    """The installed package's version, or that of the unpacked wheel TPU_LIBRARY_PATH points into."""
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    assert tpu_plan.libtpu_version() == importlib.metadata.version("libtpu")
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu-0.0.52.dist-info").mkdir()
    (tmp_path / "libtpu-0.0.52.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: libtpu\nVersion: 0.0.52\n")
    library = tmp_path / "libtpu" / "libtpu.so"
    monkeypatch.setenv("TPU_LIBRARY_PATH", str(library))
    assert tpu_plan.libtpu_version() == f"0.0.52 ({library})"
    monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "other" / "lib" / "libtpu.so"))
    assert tpu_plan.libtpu_version() == str(tmp_path / "other" / "lib" / "libtpu.so")
