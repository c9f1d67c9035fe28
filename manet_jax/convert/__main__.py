"""Command line: PyTorch weights -> manet-jax checkpoint, and back.

    python -m manet_jax.convert to-flax Pretrained_on_MSCeleb.pth.tar checkpoints/msceleb --num-classes 7
    python -m manet_jax.convert to-flax resnet18-f37072fd.pth checkpoints/imagenet --num-classes 7
    python -m manet_jax.convert to-torch runs/raf/best manet_raf.pth
"""

from __future__ import annotations

import argparse
import sys

import jax

from manet_jax.checkpoints import CheckpointError, load_variables, save_variables
from manet_jax.convert.core import (StateDictMismatchError, flax_to_torch, import_resnet18, import_state_dict,
                                    is_resnet18, num_classes_of)
from manet_jax.convert.files import CheckpointFileError, load_state_dict_file, save_state_dict_file


def to_flax(args: argparse.Namespace) -> None:
    state_dict = load_state_dict_file(args.input)
    rng = jax.random.key(args.seed)
    if is_resnet18(state_dict):
        kind = "ImageNet ResNet-18 (torchvision names)"
        conversion = import_resnet18(state_dict, args.num_classes or 7, rng)
    else:
        kind = f"MA-Net with {num_classes_of(state_dict)}-way heads"
        conversion = import_state_dict(state_dict, args.num_classes, rng)
    num_classes = args.num_classes or num_classes_of(state_dict)
    print(f"{args.input}: {kind}; {len(conversion.loaded)} tensors loaded, "
          f"{len(conversion.initialised)} initialised fresh (seed {args.seed}), {len(conversion.dropped)} dropped")
    print(conversion.summary())
    out = save_variables(args.output, conversion.variables, num_classes=num_classes,
                         source=f"{args.input} ({kind})")
    print(f"wrote {out} (MANet(num_classes={num_classes}))")


def to_torch(args: argparse.Namespace) -> None:
    variables, header = load_variables(args.checkpoint)
    state_dict = flax_to_torch(variables)
    out = save_state_dict_file(state_dict, args.output)
    print(f"wrote {out}: {len(state_dict)} reference state_dict entries "
          f"(MANet(num_classes={header['num_classes']}); load with model.load_state_dict(torch.load(path)))")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manet_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-flax", help="PyTorch weights -> manet-jax (Orbax) checkpoint directory",
                       description="Reads an official MA-Net checkpoint (.pth.tar with `state_dict`, DataParallel "
                       "`module.` keys, 12,666-way MS-Celeb heads) or a torchvision ImageNet ResNet-18, from "
                       ".pth/.pth.tar (torch.load weights_only=True), .safetensors or .npz, and writes a "
                       "checkpoint directory the trainer (config.init_from) and the evaluator can load.")
    p.add_argument("input", help="weight file: .pth, .pth.tar, .safetensors or .npz")
    p.add_argument("output", help="new checkpoint directory")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the target model; heads of another size are initialised fresh "
                        "(default: the checkpoint's, or 7 for a ResNet-18)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default 0)")
    p.set_defaults(run=to_flax)
    p = sub.add_parser("to-torch", help="manet-jax checkpoint directory -> reference PyTorch state_dict file",
                       description="Writes the reference state_dict (official key names, OIHW layouts, "
                       "num_batches_tracked) as .pth (needs torch), .safetensors or .npz.")
    p.add_argument("checkpoint", help="checkpoint directory (from to-flax or the trainer)")
    p.add_argument("output", help="output file: .pth, .safetensors or .npz")
    p.set_defaults(run=to_torch)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CheckpointFileError, CheckpointError, StateDictMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
