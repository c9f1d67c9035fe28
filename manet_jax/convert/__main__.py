"""Command line: PyTorch weights -> manet-jax model bundle, and back.

    python -m manet_jax.convert to-flax Pretrained_on_MSCeleb.pth.tar weights/msceleb --num-classes 7
    python -m manet_jax.convert to-flax resnet18-f37072fd.pth weights/imagenet --num-classes 7
    python -m manet_jax.convert to-torch runs/raf manet_raf.pth
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax

from manet_jax import cli
from manet_jax.bundle import ModelSpec, default_class_names, load_bundle, save_bundle
from manet_jax.convert.core import flax_to_torch, import_resnet18, import_state_dict, is_resnet18, num_classes_of
from manet_jax.convert.files import load_state_dict_file, save_state_dict_file
from manet_jax.models import MULTISCALE_WIRINGS


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
    spec = ModelSpec(default_class_names(num_classes), image_size=args.image_size,
                     multiscale_wiring=args.multiscale_wiring, source=f"{args.input} ({kind})")
    out = save_bundle(args.output, conversion.variables, spec)
    print(f"wrote {out} (MANet(num_classes={num_classes}), multi-scale wiring {spec.multiscale_wiring})")


def to_torch(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.checkpoint)
    state_dict = flax_to_torch(bundle.variables)
    out = save_state_dict_file(state_dict, args.output)
    print(f"wrote {out}: {len(state_dict)} reference state_dict entries (MANet(num_classes="
          f"{bundle.spec.num_classes}), multi-scale wiring {bundle.spec.multiscale_wiring}; load with "
          "model.load_state_dict(torch.load(path)))")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("manet_jax.convert", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-flax", help="PyTorch weights -> manet-jax model bundle",
                       description="Reads an official MA-Net checkpoint (.pth.tar with `state_dict`, DataParallel "
                       "`module.` keys, 12,666-way MS-Celeb heads) or a torchvision ImageNet ResNet-18, from "
                       ".pth/.pth.tar (torch.load weights_only=True), .safetensors or .npz, and writes a "
                       "model bundle the trainer (config.init_from), the evaluator and predict can load.")
    p.add_argument("input", help="weight file: .pth, .pth.tar, .safetensors or .npz")
    p.add_argument("output", help="new bundle directory")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the target model; heads of another size are initialised fresh "
                        "(default: the checkpoint's, or 7 for a ResNet-18)")
    p.add_argument("--multiscale-wiring", choices=MULTISCALE_WIRINGS, default=MULTISCALE_WIRINGS[0],
                   help="the official code's multi-scale wiring the weights were trained with (default: "
                        "%(default)s; see README, 'The paper's experiments')")
    p.add_argument("--image-size", type=int, default=224, help="input size the model runs at (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default 0)")
    p.set_defaults(run=to_flax)
    p = sub.add_parser("to-torch", help="manet-jax model -> reference PyTorch state_dict file",
                       description="Writes the reference state_dict (official key names, OIHW layouts, "
                       "num_batches_tracked) as .pth (needs torch), .safetensors or .npz.")
    p.add_argument("checkpoint", help="model: a bundle (from to-flax), trainer checkpoint or workdir")
    p.add_argument("output", help="output file: .pth, .safetensors or .npz")
    p.set_defaults(run=to_torch)
    args = parser.parse_args(argv)
    return cli.run(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
