"""Plan a training run on a Cloud TPU slice before renting it, on any machine (no TPU needed):

  python -m manet_jax.tpu_plan --config configs/raf.py --topology v5p-32 [--num-slices N]
      [--config.KEY=VALUE ...] [--output plan.json]

Compiles the run's own train and eval steps (the trainer's setup, config and batch) ahead of time
for the slice's devices, and prints per chip and for the slice: hosts, devices and batch shares;
HBM use against the chip's; FLOPs and bytes per step and per image; the collectives; compile
times; and a roofline estimate (an upper bound) of step time, images/s and epoch time, with the
input rate each host must sustain. --topology takes Cloud's accelerator types (v4-8, v5p-32,
v5litepod-8 or v5e-8, v6e-8, ...). Needs libtpu: pip install -e '.[tpu]'. A 224x224 step
compiles in minutes on a few CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manet_jax import cli

if TYPE_CHECKING:
    from manet_jax.tpu.compiled_steps import Plan

# Training images per CPU-second of the input pipeline: `python -m manet_jax.input_benchmark`,
# RAF-DB-like 100x100 JPEGs -> 224 px RandomResizedCrop + flip (docs/datasets.md, "Input throughput").
INPUT_IMAGES_PER_CORE_S = 600.0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.tpu_plan", __doc__)
    cli.add_config_option(parser)
    parser.add_argument("--topology", required=True, metavar="TYPE",
                        help="Cloud TPU accelerator type: v4-8, v5p-32, v5litepod-8 (or v5e-8), v6e-8, ...")
    parser.add_argument("--num-slices", type=int, default=1,
                        help="slices joined over the data-center network (multi-slice data parallelism)")
    parser.add_argument("--steps", default="train,eval", help="steps to compile: train and/or eval (default both)")
    parser.add_argument("--train-examples", type=int, metavar="N",
                        help="train split size, for datasets whose size is not published (image_folder)")
    parser.add_argument("--hbm-limit", type=float, metavar="GIB",
                        help="HBM per chip to plan for (default: what the compiler lets a program use)")
    parser.add_argument("--input-images-per-core", type=float, default=INPUT_IMAGES_PER_CORE_S, metavar="R",
                        help=f"training images per CPU-second of the input pipeline (default "
                             f"{INPUT_IMAGES_PER_CORE_S:g}, measured by python -m manet_jax.input_benchmark)")
    parser.add_argument("--output", metavar="FILE", help="write the plan as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = cli.parse_with_overrides(build_parser(), argv)
    return cli.run(lambda: plan(args, overrides), whole_process=argv is None)


def plan(args: argparse.Namespace, overrides: list[str]) -> None:
    from manet_jax.tpu.slices import slice_type
    from manet_jax.training.config import load_config

    config = load_config(args.config, overrides)
    slice_type(args.topology)  # an unknown name fails before anything starts
    from manet_jax import storage  # etils epath takes a second to import: once the tool has started

    outputs = [storage.output(args.output, "--output")] if args.output else []
    storage.check_outputs(outputs)
    cli.start_tensorflow()
    from manet_jax.tpu.compiled_steps import make_plan

    result = make_plan(config, args.topology, args.num_slices, args.steps.split(","), args.train_examples,
                       args.hbm_limit, args.input_images_per_core, log=lambda line: print(line, flush=True))
    print()
    print(report(result))
    if args.output:
        payload = {"config": args.config, "overrides": overrides,
                   "versions": {**{name: importlib.metadata.version(name) for name in ("jax", "jaxlib")},
                                "libtpu": libtpu_version()},
                   **to_json(result)}
        with storage.writing(outputs) as (temporary,):
            temporary.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.output}")


def libtpu_version() -> str:
    """The version of the libtpu that JAX loads: the installed package's, or for a library chosen with
    TPU_LIBRARY_PATH, that of the unpacked wheel it is in ('<version> (<path>)'), else its path."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if not path:
        return importlib.metadata.version("libtpu")
    wheel = Path(path).resolve().parents[1]  # <wheel>/libtpu/libtpu.so beside <wheel>/libtpu-<version>.dist-info
    found = [d.version for d in importlib.metadata.distributions(path=[str(wheel)]) if d.metadata["Name"] == "libtpu"]
    return f"{found[0]} ({path})" if found else path


def to_json(result: Plan) -> dict[str, Any]:
    """The plan and what follows from it, as JSON values."""
    out = dataclasses.asdict(result)
    for mode, step in result.steps.items():
        out["steps"][mode].update(step_s=step.step_s, bound=step.bound, images_per_s_per_chip=step.images_per_s,
                                  images_per_s_per_slice=step.images_per_s * result.devices / result.num_slices)
    out["epoch_s"] = result.epoch_s()
    host_input = result.host_input()
    out["host_input"] = None if host_input is None else {"images_per_s": host_input[0], "cpu_cores": host_input[1]}
    return out


def report(result: Plan) -> str:
    """The plan as a table: a column per compiled step."""
    steps = list(result.steps.values())
    gib, gb = 2**30, 1e9
    slices = f" x {result.num_slices} slices (over the data-center network)" if result.num_slices > 1 else ""
    splits = ", ".join(f"{split} {count:,}" for split, count in result.splits.items()) or "split sizes not published"
    note = f"; {result.splits_note}" if result.splits_note else ""
    lines = [f"{result.accelerator}{slices}: {result.devices} x {result.device_kind} ({result.topology}), "
             f"{result.hosts} host(s) of {result.devices_per_host} device(s), one device per chip",
             f"{result.dataset}: {splits}{note}; {result.image_size}x{result.image_size} {result.dtype}, "
             f"{result.branch_execution} local branches", ""]

    def row(label: str, cell) -> None:
        lines.append(f"  {label:<40}" + "".join(f"{cell(step):<32}" for step in steps).rstrip())

    row("", lambda s: s.mode)
    row("batch: global / per host / per device",
        lambda s: f"{s.global_batch} / {s.global_batch // result.hosts} / {s.device_batch}")
    row("compile (lower + compile)", lambda s: f"{s.lower_s + s.compile_s:.0f} s ({s.lower_s:.0f} + {s.compile_s:.0f})")
    row("HBM per chip: peak", lambda s: f"{s.memory['peak'] / gib:.2f} GiB of {result.usable_hbm_gib:.2f} "
                                        f"({100 * s.memory['peak'] / gib / result.usable_hbm_gib:.1f}%)")
    row("  arguments / outputs / aliased", lambda s: " / ".join(
        f"{s.memory[k] / gib:.2f}" for k in ("argument", "output", "alias")) + " GiB")
    row("  temporaries / code", lambda s: f"{s.memory['temp'] / gib:.2f} / {s.memory['generated_code'] / gib:.2f} GiB")
    row("FLOPs per chip per step", lambda s: f"{s.flops / 1e9:,.1f} G")
    row("FLOPs per image (model's count)", lambda s: f"{s.flops / s.device_batch / 1e9:.2f} G "
                                                    f"({s.model_flops / s.device_batch / 1e9:.2f} G: "
                                                    f"{s.flops / s.model_flops:.2f}x)")
    row("HBM bytes accessed per step / image", lambda s: f"{s.bytes_accessed / gb:.2f} GB / "
                                                        f"{s.bytes_accessed / s.device_batch / 1e6:.0f} MB")
    row("roofline step time (bound)", lambda s: f"{1e3 * s.step_s:.2f} ms ({s.bound})")
    row("  compute / HBM / ICI / DCN", lambda s: " / ".join(
        f"{1e3 * s.seconds[k]:.2f}" if k in s.seconds else "-" for k in ("compute", "hbm", "ici", "dcn")) + " ms")
    row("images/s per chip (upper bound)", lambda s: f"{s.images_per_s:,.0f}")
    row("images/s per slice (upper bound)", lambda s: f"{s.images_per_s * result.devices / result.num_slices:,.0f}")
    row("images/s per chip at peak FLOP/s", lambda s: f"{s.device_batch / s.seconds['compute']:,.0f}")
    epoch = result.epoch_s()
    row("epoch (upper bound)", lambda s: "-" if epoch[s.mode] is None else
        f"{epoch[s.mode]:,.1f} s ({result.train_examples if s.mode == 'train' else result.eval_examples:,} images)")
    lines.append("\ncollectives per step (per chip: instructions, bytes reduced or gathered, devices per group)")
    for step in steps:
        found = [f"{c.count} {kind} {_decimal_bytes(c.bytes)}"
                 + (f" (groups of {', '.join(map(str, sorted(c.group_sizes)))})" if c.group_sizes else "")
                 for kind, c in sorted(step.collectives.items())]
        lines.append(f"  {step.mode}: {'; '.join(found) or 'none'}")
    host_input = result.host_input()
    if host_input:
        lines.append(f"input per host at the roofline: {host_input[0]:,.0f} training images/s, "
                     f"{host_input[1]:,.1f} CPU cores at {result.input_images_per_core_s:g} images per core-second")
    lines.append("The roofline: compute, HBM traffic and collectives overlapping perfectly at the data sheet's "
                 "peaks. Real steps are slower (MA-Net trains at 14% of an H100's peak FLOP/s). The HBM bytes are "
                 "XLA's count of every fused operation's inputs and outputs; the chip's on-chip memory can save some "
                 "of that traffic, which peak FLOP/s alone cannot beat.")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def _decimal_bytes(count: float) -> str:
    """'600 B', '26.1 MB', ..."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:.0f} B"


if __name__ == "__main__":
    sys.exit(main())
