"""Throughput of MA-Net training and evaluation steps, optionally against the official PyTorch model.

    python -m manet_jax.benchmark --batch-sizes 64,128 --dtypes float32,bfloat16 \
        [--compare-torch PATH/TO/MA-Net] [--output bench.json]

JAX steps run on every local device (batch sharded over a `data` mesh axis) on device-resident
synthetic batches, so the input pipeline is not measured (`python -m manet_jax.input_benchmark`
measures it). Compile time is reported apart from the steady state: after
`--warmup` calls, `--repeats` timed repetitions of `--steps` steps each give the median images/s
and its spread (min-max). The achieved TFLOP/s counts the model's FLOPs (7.28 GFLOPs per 224x224
image forward, 3x that per training step; scaled with the input area) for both frameworks; the
fraction of peak uses `--peak-tflops` or the known dense peak of the chip for the compute dtype.
With `--compare-torch` the official PyTorch model (imported from the given clone) is timed in the
same process on the same device, batch and input: float32 eager as the official code trains, and
autocast bfloat16 with channels_last, and the ratios are printed. With `--onnx` the eval mode also
times ONNX Runtime on the CPU running the same model exported with `--format onnx`'s route (forward
pass only; the `onnx` extra), in float32 and quantized to int8 (`--quantize int8`, calibrated on 16
synthetic faces), one after the other at each batch size; the JSON names the CPU and its SIMD flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from manet_jax import cli, storage
from manet_jax.accelerators import peak_tflops
from manet_jax.bundle import Bundle, ModelSpec, default_class_names
from manet_jax.convert.wiring import synthetic_faces
from manet_jax.errors import ConfigError
from manet_jax.inference.onnx_export import export_onnx, quantized_export
from manet_jax.inference.onnx_runtime import OnnxPredictor
from manet_jax.inference.quantize import INT8, SIMD_FLAGS, cpu_flags, cpu_info
from manet_jax.mesh import batch_sharded, make_mesh, platform, replicated
from manet_jax.models import BRANCH_EXECUTION, MANet, branch_execution_for, init_variables, model_flops
from manet_jax.training.steps import create_train_state, make_eval_step, make_train_step, sgd

NUM_CLASSES = 7


@dataclasses.dataclass
class Result:
    framework: str
    variant: str
    mode: str
    batch: int
    images_per_s: float
    spread: tuple[float, float]
    compile_s: float | None = None
    tflops: float | None = None
    peak_fraction: float | None = None
    peak_memory_gib: float | None = None


def timed_repeats(run: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `run` (which must block until its work is done), after warm-up."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def summarise(framework: str, variant: str, mode: str, batch: int, seconds: list[float], steps: int,
              flops_per_step: float | None, peak_tflops: float | None, **extra) -> Result:
    rates = sorted(batch * steps / s for s in seconds)
    median = statistics.median(rates)
    tflops = flops_per_step * median / batch / 1e12 if flops_per_step else None
    return Result(framework, variant, mode, batch, median, (rates[0], rates[-1]), tflops=tflops,
                  peak_fraction=tflops / peak_tflops if tflops and peak_tflops else None, **extra)


def device_peak_tflops(dtype: str, override: float | None) -> float | None:
    return override or peak_tflops(jax.local_devices()[0].device_kind, dtype)


def peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def bench_jax(mode: str, dtype: str, batch: int, args: argparse.Namespace) -> Result:
    """One JAX configuration: compile, then time `args.steps` steps per repetition."""
    mesh = make_mesh()
    execution = branch_execution_for(platform(mesh)) if args.branch_execution == "auto" else args.branch_execution
    model = MANet(NUM_CLASSES, dtype=jnp.dtype(dtype), branch_execution=execution)
    optimizer = sgd(0.01)
    state = create_train_state(init_variables(model, jax.random.key(0)), optimizer, mesh)
    rng = np.random.default_rng(0)
    host = {"image": rng.random((batch, args.image_size, args.image_size, 3), np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32), "mask": np.ones(batch, np.float32)}
    if mode == "train":
        host.pop("mask")
    data = jax.device_put(host, batch_sharded(mesh))
    step = make_train_step(model, optimizer, mesh) if mode == "train" else make_eval_step(model, mesh)
    target = state if mode == "train" else state.variables
    more = () if mode == "train" else (jax.device_put(np.ones(NUM_CLASSES, bool), replicated(mesh)),)
    start = time.perf_counter()
    compiled = step.lower(target, data, *more).compile()
    compile_s = time.perf_counter() - start
    def run():
        nonlocal target
        out = None
        for _ in range(args.steps):
            if mode == "train":
                target, out = compiled(target, data)
            else:
                out = compiled(target, data, *more)
        jax.block_until_ready(out)

    seconds = timed_repeats(run, args.warmup, args.repeats)
    return summarise("jax", dtype, mode, batch, seconds, args.steps, model_flops(mode, batch, args.image_size),
                     device_peak_tflops(dtype, args.peak_tflops), compile_s=compile_s,
                     peak_memory_gib=peak_memory_gib())


def bench_torch(module, mode: str, variant: str, batch: int, args: argparse.Namespace) -> Result:
    """The official PyTorch model: 'float32' eager, or 'bfloat16' autocast with channels_last."""
    import torch

    from manet_jax.reference_model import build_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as the official main.py
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_reference(module, NUM_CLASSES).to(device)
    x = torch.rand(batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    if variant == "bfloat16":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bfloat16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train(mode == "train")

    def step():
        if mode == "train":
            with autocast:
                local, glob = model(x)
                loss = 0.6 * criterion(local, y) + 0.4 * criterion(glob, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                model(x)

    def run():
        for _ in range(args.steps):
            step()
        sync()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed_repeats(run, args.warmup, args.repeats)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return summarise("torch", variant, mode, batch, seconds, args.steps, model_flops(mode, batch, args.image_size),
                     device_peak_tflops(variant, args.peak_tflops), peak_memory_gib=memory)


ONNX_PRECISIONS = ("float32", INT8)
CALIBRATION_FACES = 16


def export_for_onnx(directory: Path, image_size: int) -> dict[str, float]:
    """Exports the benchmark's model (JAX's weights) into `directory`/float32 and, quantized,
    `directory`/int8 as `python -m manet_jax.export --format onnx [--quantize int8]` does; returns
    the seconds each took."""
    spec = ModelSpec(default_class_names(NUM_CLASSES), image_size)
    bundle = Bundle(spec, jax.device_get(init_variables(MANet(NUM_CLASSES), jax.random.key(0))))
    float32, int8 = (directory / precision for precision in ONNX_PRECISIONS)
    float32.mkdir()
    int8.mkdir()
    start = time.perf_counter()
    export_onnx(bundle, float32)
    exported = time.perf_counter()
    quantized_export(bundle, float32, int8, synthetic_faces(CALIBRATION_FACES, image_size))
    return {"float32": exported - start, INT8: time.perf_counter() - start}  # int8: the export, then quantized


def bench_onnx(directory: Path, export_s: float, batch: int, args: argparse.Namespace) -> Result:
    """ONNX Runtime on the CPU (all graph optimisations, `--onnx-threads` intra-op threads) running
    the export in `directory`; `compile_s` is the export's seconds."""
    predictor = OnnxPredictor(directory, batch, args.onnx_threads)
    images = np.random.default_rng(0).random((batch, args.image_size, args.image_size, 3), np.float32)

    def run():
        for _ in range(args.steps):
            predictor(images)

    seconds = timed_repeats(run, args.warmup, args.repeats)
    variant = f"{predictor.precision}/{args.onnx_threads}t" if args.onnx_threads else predictor.precision
    return summarise("onnxruntime", variant, "eval", batch, seconds, args.steps,
                     model_flops("eval", batch, args.image_size), None, compile_s=export_s)


def ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    """JAX's and ONNX Runtime's images/s over each PyTorch variant's, per mode and batch."""
    index = {(r.framework, r.variant, r.mode, r.batch): r.images_per_s for r in results}
    out = []
    for (framework, variant, mode, batch), rate in index.items():
        if framework == "torch":
            continue
        for torch_variant in ("float32", "bfloat16"):
            other = index.get(("torch", torch_variant, mode, batch))
            if other:
                out.append({"mode": mode, "batch": batch, "framework": framework, "jax": variant,
                            "torch": torch_variant, "ratio": rate / other})
    return out


def format_table(results: Sequence[Result]) -> str:
    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    lines = [f"{'framework':<11} {'variant':<9} {'mode':<5} {'batch':>5} {'img/s':>9} {'min-max':>17} "
             f"{'compile s':>9} {'TFLOP/s':>8} {'of peak':>7} {'peak GiB':>8}"]
    for r in results:
        lines.append(f"{r.framework:<11} {r.variant:<9} {r.mode:<5} {r.batch:>5} {r.images_per_s:>9.1f} "
                     f"{r.spread[0]:>8.1f}-{r.spread[1]:<8.1f} {fmt(r.compile_s, '>9.1f')} "
                     f"{fmt(r.tflops, '>8.2f')} {fmt(r.peak_fraction and 100 * r.peak_fraction, '>6.1f')}% "
                     f"{fmt(r.peak_memory_gib, '>8.2f')}")
    return "\n".join(lines)


def cpu_model() -> str:
    """The host CPU's model name (Linux's /proc/cpuinfo; else what `platform` knows)."""
    return cpu_info().get("model name") or host_platform.processor()


def cpu_family() -> str:
    """The host CPU's vendor, family and model numbers (Linux's /proc/cpuinfo; else empty)."""
    info = cpu_info()
    return f"{info['vendor_id']} family {info['cpu family']} model {info['model']}" if "cpu family" in info else ""


def environment() -> dict[str, Any]:
    env = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "python": host_platform.python_version(), "backend": jax.default_backend(),
           "devices": [d.device_kind for d in jax.local_devices()], "processor": cpu_model(),
           "cpu_cores": os.cpu_count(), "machine": host_platform.machine(),
           "cpu_family": cpu_family(), "cpu_flags": sorted(cpu_flags() & set(SIMD_FLAGS))}
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.benchmark", __doc__)
    parser.add_argument("--batch-sizes", default="32", help="comma-separated global batch sizes (default 32)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="JAX compute dtypes (default both)")
    parser.add_argument("--modes", default="train,eval", help="train and/or eval (default both)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repetition (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions after compiling (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--branch-execution", choices=("auto", *BRANCH_EXECUTION), default="auto",
                        help="how the four local branches run (MANet.branch_execution; auto: unrolled on CPU, "
                             "else vmap)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak TFLOP/s for the fraction-of-peak column (known: H100/H200/A100/TPUs)")
    parser.add_argument("--compare-torch", metavar="PATH", default=None,
                        help="clone of the official MA-Net repository: time its model too and print ratios")
    parser.add_argument("--torch-variants", default="float32,bfloat16",
                        help="PyTorch variants with --compare-torch: float32 (eager) and/or bfloat16 "
                             "(autocast, channels_last)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--onnx", action="store_true",
                        help="in eval mode also time ONNX Runtime on the CPU (the `onnx` extra)")
    parser.add_argument("--onnx-threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--note", default="", help="kept in the JSON's args: how the machine was (idle, shared, ...)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: benchmark(args), whole_process=argv is None)


def measure(args: argparse.Namespace, batch_sizes: list[int], modes: list[str], module: Any,
            onnx_dir: Path | None) -> list[Result]:
    """Each batch size's and mode's results, each printed as it comes: JAX's dtypes, ONNX Runtime
    (eval, on a model exported into `onnx_dir`, when given) and the official model's variants."""
    export_s = export_for_onnx(onnx_dir, args.image_size) if onnx_dir else {}
    results = []
    for batch in batch_sizes:
        for mode in modes:
            for dtype in args.dtypes.split(","):
                results.append(bench_jax(mode, dtype, batch, args))
                print(format_table(results[-1:]).splitlines()[1], flush=True)
            if onnx_dir and mode == "eval":
                for precision in ONNX_PRECISIONS:
                    results.append(bench_onnx(onnx_dir / precision, export_s[precision], batch, args))
                    print(format_table(results[-1:]).splitlines()[1], flush=True)
            if module is not None:
                for variant in args.torch_variants.split(","):
                    results.append(bench_torch(module, mode, variant, batch, args))
                    print(format_table(results[-1:]).splitlines()[1], flush=True)
    return results


def benchmark(args: argparse.Namespace) -> None:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    module = None
    if args.onnx and "eval" not in modes:
        raise ConfigError("--onnx times evaluation only: add eval to --modes")
    if args.onnx and importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("--onnx needs ONNX Runtime: pip install -e '.[onnx]'")
    if args.compare_torch and args.image_size != 224:
        raise ConfigError("--compare-torch needs --image-size 224: the official model slices fixed 14x14 quadrants")
    outputs = [storage.output(args.output, "--output")] if args.output else []
    storage.check_outputs(outputs)
    if args.compare_torch:
        from manet_jax.reference_model import load_reference
        module = load_reference(args.compare_torch)
        if args.torch_threads:
            import torch
            torch.set_num_threads(args.torch_threads)
    env = environment()
    print(f"devices: {jax.device_count()} x {env['devices'][0]} ({env['backend']}), jax {env['jax']}"
          + (f", torch {env['torch']}" if "torch" in env else ""), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        results = measure(args, batch_sizes, modes, module, Path(scratch) if args.onnx else None)
    print()
    print(format_table(results))
    table = ratios(results)
    if table:
        print("\nratios (JAX's or ONNX Runtime's images/s over PyTorch's):")
        for row in table:
            print(f"  {row['mode']:<5} batch {row['batch']:>4}: {row['framework']} {row['jax']:<8} / torch "
                  f"{row['torch']:<8} = {row['ratio']:.2f}x")
    if args.output:
        payload = {"environment": env, "args": vars(args), "results": [dataclasses.asdict(r) for r in results],
                   "ratios": table}
        with storage.writing(outputs) as (temporary,):
            temporary.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
