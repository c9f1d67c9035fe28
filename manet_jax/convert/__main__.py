"""Command line: PyTorch weights -> manet-jax model bundle, and back; which wiring weights fit.

    python -m manet_jax.convert inspect Pretrained_on_MSCeleb.pth.tar
    python -m manet_jax.convert to-flax Pretrained_on_MSCeleb.pth.tar weights/msceleb --num-classes 7
    python -m manet_jax.convert to-flax resnet18-f37072fd.pth weights/imagenet --num-classes 7
    python -m manet_jax.convert to-torch runs/raf manet_raf.pth
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manet_jax import cli
from manet_jax.errors import ConfigError

# JAX, TensorFlow and the model's modules load inside the work (`cli.run`), once the tool has started.

INSPECT_HELP = """\
Runs face images through MA-Net's pre-extractor and multi-scale blocks in train mode under each
multi-scale wiring and compares the batch statistics of every cascade-B BatchNorm (bn2_2_k)
with the running statistics stored in the weights: training leaves there the statistics of the
wiring it ran. Distance: over channels, the root mean square of the mean's shift in running
standard deviations and of the log variance ratio (0: identical). Cascade A (bn1, bn1_2_k) sees
the same kind of input under both wirings; its distance shows how well the images stand in for
the training data. Exit status 0 when every block fits one wiring clearly, 1 when the evidence
is weak."""


def to_flax(args: argparse.Namespace) -> None:
    import jax

    from manet_jax.bundle import ModelSpec, check_new_bundle, default_class_names, read_face_template, save_bundle
    from manet_jax.convert.core import import_resnet18, import_state_dict, is_resnet18, num_classes_of
    from manet_jax.convert.files import load_state_dict_file

    check_new_bundle(args.output)
    template = read_face_template(args.face_template, "--face-template") if args.face_template else None
    state_dict = load_state_dict_file(args.input)
    rng = jax.random.key(args.seed)
    if is_resnet18(state_dict):
        kind = "ImageNet ResNet-18 (torchvision names)"
        conversion = import_resnet18(state_dict, args.num_classes or 7, rng)
    else:
        kind = f"MA-Net with {num_classes_of(state_dict)}-way heads"
        conversion = import_state_dict(state_dict, args.num_classes, rng)
    num_classes = args.num_classes or num_classes_of(state_dict)
    spec = ModelSpec(default_class_names(num_classes), image_size=args.image_size,
                     multiscale_wiring=args.multiscale_wiring, source=f"{args.input} ({kind})", face_template=template)
    out = save_bundle(args.output, conversion.variables, spec)
    print(f"{args.input}: {kind}; {len(conversion.loaded)} tensors loaded, "
          f"{len(conversion.initialised)} initialised fresh (seed {args.seed}), {len(conversion.dropped)} dropped")
    print(conversion.summary())
    print(f"wrote {out} (MANet(num_classes={num_classes}), multi-scale wiring {spec.multiscale_wiring})")
    if not is_resnet18(state_dict):
        print(f"the wiring is --multiscale-wiring's; `python -m manet_jax.convert inspect {args.input}` tells which "
              "one the weights were trained with")


def inspect(args: argparse.Namespace) -> int:
    from etils import epath

    from manet_jax.bundle import load_bundle
    from manet_jax.convert.core import StateDictMismatchError, is_resnet18, num_classes_of, torch_to_flax
    from manet_jax.convert.files import load_state_dict_file
    from manet_jax.convert.wiring import fit_wirings, synthetic_faces
    from manet_jax.data.image_files import load_image_folder
    from manet_jax.models import check_image_size

    check_image_size(args.image_size, "--image-size")
    if args.max_images < 2:
        raise ConfigError(f"--max-images={args.max_images}: batch statistics need at least 2 images")
    if epath.Path(args.checkpoint).is_dir():
        bundle = load_bundle(args.checkpoint)
        variables, what = bundle.variables, f"model of the {bundle.spec.multiscale_wiring} wiring by its header"
    else:
        state_dict = load_state_dict_file(args.checkpoint)
        if is_resnet18(state_dict):
            raise StateDictMismatchError(f"{args.checkpoint}: an ImageNet ResNet-18 has no multi-scale blocks "
                                         "to inspect")
        variables, what = torch_to_flax(state_dict), f"MA-Net with {num_classes_of(state_dict)}-way heads"
    if args.images:
        images = load_image_folder(args.images, args.max_images, args.image_size)
        source = f"{len(images)} images of {args.images}"
    else:
        images, source = synthetic_faces(args.max_images, args.image_size), f"{args.max_images} synthetic faces"
    print(f"weights: {args.checkpoint} ({what})\nimages:  {source}, {args.image_size}x{args.image_size}\n")
    fit = fit_wirings(variables, images)
    print("distance of each multi-scale block's train-mode batch statistics from its stored running statistics\n"
          "(A: bn1 and cascade A, the same under both wirings; B: cascade B, which tells them apart)")
    print(fit.table())
    print(fit.verdict())
    if not fit.clear:
        print("Faces like those the weights were trained on may tell: --images DIR")
        return 1
    print(f"convert them with --multiscale-wiring {fit.best()}; train from them with "
          f"--config.multiscale_wiring={fit.best()}")
    return 0


def to_torch(args: argparse.Namespace) -> None:
    from manet_jax.bundle import load_bundle
    from manet_jax.convert.core import flax_to_torch
    from manet_jax.convert.files import check_state_dict_output, save_state_dict_file

    check_state_dict_output(args.output)
    bundle = load_bundle(args.checkpoint)
    state_dict = flax_to_torch(bundle.variables)
    out = save_state_dict_file(state_dict, args.output)
    print(f"wrote {out}: {len(state_dict)} reference state_dict entries (MANet(num_classes="
          f"{bundle.spec.num_classes}), multi-scale wiring {bundle.spec.multiscale_wiring}; load with "
          "model.load_state_dict(torch.load(path)))")


def build_parser() -> argparse.ArgumentParser:
    from manet_jax.convert.wiring import CHECK_IMAGES
    from manet_jax.models import MULTISCALE_WIRINGS

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
                        "%(default)s; `inspect` tells which one MA-Net weights fit; see docs/conversion.md, "
                        "'The two multi-scale wirings')")
    p.add_argument("--image-size", type=int, default=224, help="input size the model runs at (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default 0)")
    p.add_argument("--face-template", metavar="FILE",
                   help="the face template of the weights' training data (python -m manet_jax.face_template), "
                        "kept in the bundle for predict's alignment")
    p.set_defaults(run=to_flax)
    p = sub.add_parser("to-torch", help="manet-jax model -> reference PyTorch state_dict file",
                       description="Writes the reference state_dict (official key names, OIHW layouts, "
                       "num_batches_tracked) as .pth (needs torch), .safetensors or .npz.")
    p.add_argument("checkpoint", help="model: a bundle (from to-flax), trainer checkpoint or workdir")
    p.add_argument("output", help="output file: .pth, .safetensors or .npz")
    p.set_defaults(run=to_torch)
    p = sub.add_parser("inspect", help="which multi-scale wiring MA-Net weights were trained with",
                       description=INSPECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="MA-Net weights: a weight file (.pth, .pth.tar, .safetensors, .npz) or a model "
                                      "(bundle, trainer checkpoint or workdir)")
    p.add_argument("--images", metavar="DIR", help="face images to run, searched recursively (default: synthetic "
                                                   "faces); faces like the training data give the clearest answer")
    p.add_argument("--max-images", type=int, default=CHECK_IMAGES, metavar="N",
                   help="the batch: this many images (default %(default)s)")
    p.add_argument("--image-size", type=int, default=224,
                   help="input size the weights were trained at (default 224, the official code's)")
    p.set_defaults(run=inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def work() -> int | None:  # the parser needs the model's modules: parsed once the tool has started
        args = build_parser().parse_args(argv)
        return args.run(args)
    return cli.run(work, whole_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
