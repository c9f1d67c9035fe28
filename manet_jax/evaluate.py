"""Evaluate MA-Net on one or several datasets: metrics.json and confusion_matrix.png for each, a
summary table across them and, if asked, the predictions per image.

  python -m manet_jax.evaluate --checkpoint weights/raf --dataset sfew,fed_ro [--data-dir DIR]
  python -m manet_jax.evaluate --checkpoint weights/affectnet8 --dataset raf_db:test --predictions errors.csv
  python -m manet_jax.evaluate --config configs/raf.py --checkpoint runs/raf [--config.KEY=VALUE ...]

--checkpoint is a model: a trainer workdir (its best checkpoint by eval accuracy), one of its
checkpoints, or a converted bundle (`python -m manet_jax.convert to-flax ...`). Without --config,
its header gives the image size, wiring, dtype and classes, and only the --dataset sets are read
(a generated dataset such as synthetic_faces/32 is generated). A dataset's classes count as the
model's classes of the same name; one the model lacks is an error unless --class-map names the
model class it counts as, or none to leave it out. Where the model has classes the dataset lacks,
its prediction is restricted to the dataset's classes, and the unrestricted accuracy is reported
too. With --config, the config gives the dataset, its location, the image size and the eval sets
(config.eval_dataset, else the split of its dataset the paper reports on), as a training run
evaluates them: classes the model lacks are left out; --dataset, --split, --data-dir and
--batch-size set config.eval_dataset, eval_split, data_dir and eval_batch_size, and
--config.KEY=VALUE overrides others. Nothing is written unless every set is evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from manet_jax import cli
from manet_jax.errors import ConfigError


SUMMARY_FORMATS, PREDICTIONS_FORMATS = (".json", ".csv"), (".csv",)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.evaluate", __doc__)
    cli.add_config_option(parser, required=False)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="trainer workdir, checkpoint or bundle")
    parser.add_argument("--dataset", metavar="NAME[:SPLIT][,...]",
                        help="the eval sets, e.g. 'sfew,ferplus:test,fed_ro' (a split left out: --split, else the "
                             "one the paper reports on); required without --config")
    parser.add_argument("--split", help="split of the eval sets that name none (default: the one the paper reports "
                                        "on, per dataset)")
    parser.add_argument("--data-dir", metavar="DIR", help="where the datasets are prepared (default: $MANET_DATA_DIR, "
                                                          "else the repository's data/, else ~/tensorflow_datasets)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="global eval batch, a multiple of the devices (default: 64 rounded up to one)")
    parser.add_argument("--class-map", metavar="MAP",
                        help="dataset class -> model class, for classes not matched by name: 'Contempt=Disgust,...' "
                             "or a JSON file {\"Contempt\": \"Disgust\"}; an empty name (or null) leaves the class out")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where to write the reports, one folder <dataset>_<split> per eval set "
                             "(default: <checkpoint>/eval)")
    parser.add_argument("--summary", type=Path, metavar="FILE",
                        help="write the summary table to this .json or .csv file")
    parser.add_argument("--predictions", type=Path, metavar="FILE",
                        help="write one row per image (set, index, file name, label, prediction, probabilities) "
                             "to this .csv file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = cli.parse_with_overrides(parser, argv)
    if args.config is None and overrides:
        parser.error(f"{cli.CONFIG_OVERRIDE}KEY=VALUE needs --config")
    if args.config is None and not args.dataset:
        parser.error("name the eval sets with --dataset (or give a --config)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    for option, path, formats in (("--summary", args.summary, SUMMARY_FORMATS),
                                  ("--predictions", args.predictions, PREDICTIONS_FORMATS)):
        if path and path.suffix.lower() not in formats:
            parser.error(f"{option} {path}: unknown format; use a {' or '.join(formats)} file name")
        if path and not path.absolute().parent.is_dir():
            parser.error(f"{option} {path}: its folder does not exist")
    return cli.run(lambda: evaluate(args, overrides), whole_process=argv is None)


def evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    """Evaluates as `args` say, writes the outputs and prints the summary table."""
    from manet_jax.training.config import load_config, parse_eval_sets

    class_map = parse_class_map(args.class_map) if args.class_map else None
    if args.config:
        settings = {"eval_dataset": args.dataset, "eval_split": args.split, "data_dir": args.data_dir,
                    "eval_batch_size": args.batch_size}
        config = load_config(args.config, [*overrides, *(f"{k}={v}" for k, v in settings.items() if v is not None)])
    else:
        sets = parse_eval_sets(args.dataset, args.split, "--dataset")
    cli.start_tensorflow()
    import jax

    from manet_jax.training import record, run

    outputs = {"class_map": class_map, "summary": args.summary and str(args.summary),
               "predictions": args.predictions and str(args.predictions)}
    if args.config:
        results = run.evaluate_checkpoint(config, args.checkpoint, args.output_dir, **outputs)
    else:
        results = run.evaluate_bundle(args.checkpoint, sets, args.output_dir, data_dir=args.data_dir,
                                             batch_size=args.batch_size, **outputs)
    if jax.process_index() == 0:
        print(record.format_summary(record.summary_rows(results)))


def parse_class_map(value: str) -> dict[str, str | None]:
    """--class-map: a JSON file of {dataset class: model class or null}, or 'a=b,c=,...' (an empty
    model class: null, the class is left out)."""
    if value.lower().endswith(".json"):
        try:
            mapping = json.loads(Path(value).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--class-map {value}: cannot be read as JSON ({e})") from None
        if not (isinstance(mapping, dict) and all(isinstance(v, str | None) for v in mapping.values())):
            raise ConfigError(f"--class-map {value}: must hold an object of class names, e.g. "
                              '{"Contempt": "Disgust", "Fear": null}')
        return {name: target or None for name, target in mapping.items()}
    mapping = {}
    for entry in value.split(","):
        name, equals, target = (part.strip() for part in entry.partition("="))
        if not name or not equals:
            raise ConfigError(f"--class-map: {entry.strip()!r} is not DATASET_CLASS=MODEL_CLASS (or DATASET_CLASS= "
                              "to leave it out); separate several with ','")
        if name in mapping:
            raise ConfigError(f"--class-map: {name} is mapped twice")
        mapping[name] = target or None
    return mapping


if __name__ == "__main__":
    sys.exit(main())
