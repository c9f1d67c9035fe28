"""Stage-by-stage comparison of MANet with the official PyTorch MA-Net.

    python -m manet_jax.compare --reference-repo PATH/TO/MA-Net [--checkpoint FILE] \
        [--images DIR | --random N] [--num-classes C] [--output report.json]

Imports `MANet` from `<repo>/model/manet.py` (a clone of github.com/zengqunzhao/MA-Net; only
torch is needed), builds it with the checkpoint's weights (or its own random initialisation),
finds which multi-scale wiring the clone's code has (its first multi-scale block against
MANet's of each wiring, on one input: the code since 2023-04-15 runs "2023", the code before
"2021"), converts the weights to Flax, runs both models on the same images in eval mode and for
one train-mode forward, and prints the max absolute and relative differences per stage, per
head, of the fused logits and of the BatchNorm running statistics after the train forward. Exit
code 0 when every judged quantity is within the golden tolerances (train-mode stage outputs
have none and are shown for locating a difference), 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from manet_jax import cli, storage
from manet_jax.convert import (HEAD_LAYERS, StateDictMismatchError, flax_to_torch, load_state_dict_file,
                               num_classes_of, torch_to_flax)
from manet_jax.convert.files import INSTALL_TORCH
from manet_jax.data.image_files import load_image_folder
from manet_jax.forward import forward
from manet_jax.models import MULTISCALE_WIRINGS, MANet, fused_logits, stage_outputs
from manet_jax.models.blocks import MulScaleBlock
from manet_jax.models.manet import QUADRANTS
from manet_jax.reference_model import ReferenceModelError, build_reference, load_reference

try:
    import torch
except ImportError:  # reported by main()
    torch = None

IMAGE_SIZE = 224
# Golden tolerances (float32 port vs the official float32 model, tests/data/README.md):
# kind -> (absolute, relative to the max abs of the reference array); the larger applies. Logits
# take the activations' relative tolerance where it exceeds the goldens' absolute one: a trained
# model's logits reach hundreds, and their float32 round-off grows with them. The golden files
# hold no train-mode activations, so train-mode stage rows are shown but not judged.
TOLERANCES = {"logits": (5e-5, 1e-5), "activation": (0.0, 1e-5), "bn stats": (1e-5, 0.0)}
# The first multi-scale block's output under the clone's wiring agrees to float32 round-off
# (about 1e-6 of its max abs), under the other differs by about half its max abs.
WIRING_MATCH = 1e-4
# Compared stages: the reference's top-level modules ("stem" is the max-pool output).
STAGES = ("stem", "layer1", "layer2", *(f"layer{j}_1_{p}" for p in QUADRANTS for j in (3, 4)),
          "layer3_2", "layer4_2")
LOGITS = ("logits_local", "logits_global", "logits")


class CompareError(ReferenceModelError):
    """A user-facing problem with the inputs of the comparison (reference, checkpoint, images)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared quantity."""

    mode: str
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float
    tolerance: float | None  # None: shown, not judged

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_ref, np.finfo(np.float32).tiny)

    @property
    def ok(self) -> bool | None:
        return None if self.tolerance is None else bool(self.max_abs_diff <= self.tolerance)  # False for NaN

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rel_diff": self.rel_diff, "ok": self.ok}


def compare_arrays(mode: str, name: str, ours: Any, reference: Any, kind: str | None) -> Row:
    """A row for `ours` vs `reference`, judged by the golden tolerance of `kind` (None: not judged)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise CompareError(f"{mode} {name}: MANet gives shape {ours.shape}, the reference {reference.shape}")
    max_abs_ref = float(np.abs(reference).max())
    tolerance = None if kind is None else max(TOLERANCES[kind][0], TOLERANCES[kind][1] * max_abs_ref)
    return Row(mode, name, reference.shape, float(np.abs(ours - reference).max()), max_abs_ref, tolerance)


def load_checkpoint(model: torch.nn.Module, state_dict: dict[str, np.ndarray], path: str) -> None:
    """Loads a (normalised) MA-Net state_dict into the reference, keeping its heads if their size differs."""
    current = model.state_dict()
    if num_classes_of(state_dict) != num_classes_of(current):
        state_dict = {key: value for key, value in state_dict.items() if key.split(".")[0] not in HEAD_LAYERS}
        state_dict |= {key: value for key, value in current.items() if key.split(".")[0] in HEAD_LAYERS}
    try:
        model.load_state_dict({key: torch.as_tensor(value) for key, value in state_dict.items()})
    except RuntimeError as e:
        raise CompareError(f"{path} does not fit the reference model:\n{e}") from e


def random_images(count: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) images, (N, 3, 224, 224) float32."""
    return np.random.default_rng(seed).random((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


def torch_forward(model: torch.nn.Module, images: np.ndarray, train: bool) -> dict[str, np.ndarray]:
    """Stage outputs and logits (NCHW) of one reference forward in eval or train mode."""
    outputs: dict[str, np.ndarray] = {}

    def capture(stage: str):
        return lambda module, inputs, output: outputs.__setitem__(stage, output.detach().numpy().copy())

    handles = [model.get_submodule("maxpool" if stage == "stem" else stage).register_forward_hook(capture(stage))
               for stage in STAGES]
    model.train(train)
    try:
        with torch.no_grad():
            local, glob = (t.numpy() for t in model(torch.from_numpy(images)))
    finally:
        for handle in handles:
            handle.remove()
    return {**outputs, "logits_local": local, "logits_global": glob, "logits": fused_logits(local, glob)}


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _forward(model: MANet, variables: dict, images: jax.Array, train: bool) -> tuple:
    return forward(model, variables, images, train=train, capture=True)


def jax_forward(model: MANet, variables: dict, images: np.ndarray, train: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Stage outputs and logits (converted to NCHW) of one MANet forward, and the batch statistics after it."""
    with jax.default_matmul_precision("highest"):
        logits, collections = jax.device_get(
            _forward(model, variables, jnp.asarray(images.transpose(0, 2, 3, 1)), train=train))
    outputs = {stage: np.transpose(stage_outputs(collections["intermediates"])[stage], (0, 3, 1, 2))
               for stage in STAGES}
    heads = {"logits_local": logits["local"], "logits_global": logits["global"], "logits": logits["fused"]}
    return {**outputs, **heads}, collections.get("batch_stats", variables["batch_stats"])


def detect_wiring(reference: torch.nn.Module, variables: dict, seed: int = 0) -> tuple[str | None, dict[str, float]]:
    """The multi-scale wiring of the reference's code (None: neither) and, per wiring, the max
    difference of MANet's first multi-scale block (`layer3_2.0`, eval mode, the same weights)
    from the reference's on one random input, relative to the reference's max abs."""
    block = reference.get_submodule("layer3_2.0").eval()
    x = np.random.default_rng(seed).random((2, block.conv1.in_channels, 16, 16), dtype=np.float32)
    with torch.no_grad():
        theirs = block(torch.from_numpy(x)).numpy()
    layer = {collection: variables[collection]["layer3_2"]["0"] for collection in ("params", "batch_stats")}
    differences = {}
    for wiring in MULTISCALE_WIRINGS:
        ours = MulScaleBlock(theirs.shape[1], block.conv1.stride[0], wiring=wiring).apply(
            layer, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
        differences[wiring] = float(np.abs(np.transpose(ours, (0, 3, 1, 2)) - theirs).max() / np.abs(theirs).max())
    matching = [wiring for wiring, difference in differences.items() if difference <= WIRING_MATCH]
    return (matching[0] if matching else None), differences


def compare_outputs(mode: str, ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[Row]:
    stage_kind = "activation" if mode == "eval" else None
    return ([compare_arrays(mode, stage, ours[stage], reference[stage], stage_kind) for stage in STAGES]
            + [compare_arrays(mode, name, ours[name], reference[name], "logits") for name in LOGITS])


def compare_buffers(ours: dict[str, np.ndarray], reference: dict[str, Any]) -> list[Row]:
    """One row per top-level module: all its BN running statistics (and batch counters) after the train forward."""
    groups: dict[str, tuple[list, list]] = {}
    for key, value in reference.items():
        if key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked"):
            group = key.split(".")[0]
            mine, theirs = groups.setdefault("stem" if group == "bn1" else group, ([], []))
            mine.append(np.ravel(ours[key]))
            theirs.append(np.ravel(value.numpy()))
    return [compare_arrays("train", f"bn stats {group}", np.concatenate(mine), np.concatenate(theirs), "bn stats")
            for group, (mine, theirs) in groups.items()]


def reference_variables(reference: torch.nn.Module) -> dict:
    """The reference's weights as MANet variables."""
    state_dict = {key: value.numpy().copy() for key, value in reference.state_dict().items()}  # no aliasing
    try:
        return torch_to_flax(state_dict)
    except StateDictMismatchError as e:
        raise CompareError(f"the reference model's state_dict does not match manet_jax's MANet: {e}") from e


def run(reference: torch.nn.Module, variables: dict, images: np.ndarray, wiring: str) -> list[Row]:
    """Runs the reference and MANet of `wiring` with its weights `variables` (eval, then one train
    forward) and compares them."""
    model = MANet(num_classes_of(reference.state_dict()), multiscale_wiring=wiring)
    rows = []
    for mode, train in (("eval", False), ("train", True)):
        theirs = torch_forward(reference, images, train)
        ours, batch_stats = jax_forward(model, variables, images, train)
        rows += compare_outputs(mode, ours, theirs)
    return rows + compare_buffers(flax_to_torch({"params": variables["params"], "batch_stats": batch_stats}),
                                  reference.state_dict())


def format_table(rows: Sequence[Row]) -> str:
    header = (f"{'mode':<6} {'quantity':<24} {'shape':<18} {'max|diff|':>10} {'max|ref|':>10} {'rel diff':>10} "
              f"{'tolerance':>10}  ok")
    lines = [header, "-" * len(header)]
    for row in rows:
        tolerance, ok = ("-", "-") if row.ok is None else (f"{row.tolerance:.3g}", "yes" if row.ok else "NO")
        lines.append(f"{row.mode:<6} {row.name:<24} {str(row.shape):<18} {row.max_abs_diff:>10.3g} "
                     f"{row.max_abs_ref:>10.3g} {row.rel_diff:>10.3g} {tolerance:>10}  {ok}")
    return "\n".join(lines)


def passed(rows: Sequence[Row]) -> bool:
    return all(row.ok is not False for row in rows)


def verdict(rows: Sequence[Row]) -> str:
    judged = [row for row in rows if row.ok is not None]
    failed = [f"{row.mode} {row.name}" for row in judged if not row.ok]
    if not failed:
        return f"PASS: all {len(judged)} judged quantities within the golden tolerances"
    return f"FAIL: {len(failed)} of {len(judged)} judged quantities exceed the golden tolerances: {', '.join(failed)}"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.compare", __doc__.split("\n\n")[0])
    parser.add_argument("--reference-repo", required=True, metavar="PATH",
                        help="local clone of the official MA-Net repository (holds model/manet.py)")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help=".pth / .pth.tar / .safetensors / .npz MA-Net weights (default: the reference's "
                             "random initialisation)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="DIR", help="folder of images (searched recursively, sorted)")
    source.add_argument("--random", type=int, metavar="N", help="N random images (default 2)")
    parser.add_argument("--max-images", type=int, default=8, metavar="N", help="use at most this many images of --images")
    parser.add_argument("--num-classes", type=int, metavar="C",
                        help="head size (default: the checkpoint's, else 7); other heads than the "
                             "checkpoint's are freshly initialised")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and random images")
    parser.add_argument("--output", metavar="FILE.json", help="also write the table as JSON")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.random is None and args.images is None:
        args.random = 2
    if (args.random is not None and args.random < 1) or args.max_images < 1:
        parser.error("--random and --max-images must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: compare(args), whole_process=argv is None)


def compare(args: argparse.Namespace) -> int:
    if torch is None:
        raise CompareError(f"the comparison runs the PyTorch reference and needs torch: {INSTALL_TORCH}")
    outputs = [storage.output(args.output, "--output")] if args.output else []
    storage.check_outputs(outputs)
    module = load_reference(args.reference_repo)
    state_dict = load_state_dict_file(args.checkpoint) if args.checkpoint else None
    num_classes = args.num_classes or (num_classes_of(state_dict) if state_dict else 7)
    torch.manual_seed(args.seed)
    reference = build_reference(module, num_classes)
    if state_dict is not None:
        load_checkpoint(reference, state_dict, args.checkpoint)
    images = (random_images(args.random, args.seed) if args.images is None
              else load_image_folder(args.images, args.max_images, IMAGE_SIZE).transpose(0, 3, 1, 2))
    variables = reference_variables(reference)
    detected, differences = detect_wiring(reference, variables, args.seed)
    wiring = detected or MULTISCALE_WIRINGS[0]
    measured = ", ".join(f"{w}: {d:.2g}" for w, d in differences.items())
    print(f"reference: {module.__file__}\n"
          f"wiring:    {wiring if detected else f'neither wiring fits, compared with {wiring}'} (its first "
          f"multi-scale block against MANet's, max rel diff {measured})\n"
          f"weights:   {args.checkpoint or f'random initialisation of the reference (seed {args.seed})'}\n"
          f"images:    {args.images or f'random (seed {args.seed})'}, {len(images)} x 3 x 224 x 224; "
          f"{num_classes} classes; JAX on {jax.devices()[0].platform}, matmul precision 'highest'\n")
    rows = run(reference, variables, images, wiring)
    print(format_table(rows))
    print(verdict(rows))
    if args.output:
        report = {"passed": passed(rows), "reference": module.__file__, "multiscale_wiring": detected,
                  "wiring_differences": differences,
                  "checkpoint": args.checkpoint, "images": args.images, "seed": args.seed, "num_images": len(images),
                  "num_classes": num_classes, "rows": [row.as_dict() for row in rows]}
        with storage.writing(outputs) as (temporary,):
            temporary.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
