"""Report the spread of several runs of one recipe (e.g. seeds): mean ± std, min and max per metric.

  python -m manet_jax.report runs/raf_seed0 runs/raf_seed1 runs/raf_seed2 [--json FILE] [--markdown FILE]
  python -m manet_jax.report "runs/raf_seed*"
  python -m manet_jax.report runs/raf_seed0 runs/raf_seed1 --official raf_curves.png

Each RUN is a trainer workdir or a glob of them (quoted, so that the tool expands it). For the best
and the last epoch of each run (`summary.json`) it prints, per eval set and head, the mean ± sample
standard deviation, minimum and maximum of the accuracy, the mean class accuracy and the recall of
each class, as Markdown; --json and --markdown also write the table to files. --official PNG
adds each run beside the official MA-Net run of its dataset, epoch by epoch: test accuracy and
train loss over the official curve (drawn to PNG), a verdict per epoch (behind or ahead by more
than the official run's own epoch-to-epoch swing, else on track), and the epochs whose learning
rate is not the official one.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence

from manet_jax import cli, storage
from manet_jax.reporting import RunsError, draw, official_markdown, official_table, spreads, spreads_markdown


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.report", __doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="trainer workdir, or a quoted glob of them")
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--official", nargs="?", const="official_curves.png", metavar="PNG",
                        help="compare each epoch with the official run of the dataset, drawn to PNG "
                             "(default: %(const)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        if args.official and not args.official.lower().endswith(".png"):
            raise RunsError(f"--official {args.official}: name the figure's .png file (or put --official "
                            "after the runs, for official_curves.png)")
        outputs = {option: storage.output(path, f"--{option}") for option, path in
                   (("official", args.official), ("json", args.json), ("markdown", args.markdown)) if path}
        storage.check_outputs(list(outputs.values()))
        runs = expand(args.runs)
        table = spreads(runs)
        text = spreads_markdown(table)
        with storage.writing(list(outputs.values())) as temporaries:
            written = dict(zip(outputs, temporaries))
            if args.official:
                table["official"] = official_table(runs, table["ranked_by"], args.official)
                draw(table["official"], written["official"])
                link = os.path.relpath(args.official, os.path.dirname(os.path.abspath(args.markdown))) \
                    if args.markdown else args.official  # the figure as the Markdown file sees it
                text += official_markdown(table["official"], link)
            print(text, end="")
            if args.json:
                written["json"].write_text(json.dumps(table, indent=2) + "\n")
            if args.markdown:
                written["markdown"].write_text(text)

    return cli.run(work, whole_process=argv is None)


def expand(patterns: Sequence[str]) -> list[str]:
    """The workdirs named by `patterns`: each a path, or a glob matching at least one."""
    runs = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise RunsError(f"{pattern}: matches no run")
            runs += matches
        else:
            runs.append(pattern)
    return runs


if __name__ == "__main__":
    sys.exit(main())
