"""Derives manet_jax/training/official_curves.json from a clone of the official MA-Net repository.

Run by hand from the repository root when the official logs or a paper config change:
        git clone https://github.com/zengqunzhao/MA-Net ../MA-Net
        python scripts/official_curves.py ../MA-Net
The clone may be bare; the logs are read at its HEAD with `git show`, and the file records that
commit. Each log is tied to the config in configs/ that reproduces it, whose recipe (the keys
`official.RECIPE_KEYS`) the file keeps for the trainer's and the report's comparisons.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from manet_jax.training.config import load_config_file
from manet_jax.training.official import CURVES_FILE, RECIPE_KEYS, config_value, parse_log

REPOSITORY = "github.com/zengqunzhao/MA-Net"
LOGS = {  # log name: the config that reproduces it
    "RAF-DB": "configs/raf.py", "AffectNet7": "configs/affectnet7.py", "AffectNet8": "configs/affectnet8.py",
    "CAER-S": "configs/caer_s.py", "SFEW": "configs/sfew.py", "FED-RO": "configs/fed_ro.py"}
NOTE = ("Per epoch of each official log/<name>.txt: the 'Current learning rate', the running averages of the "
        "epoch's last 'Epoch: [e][i/n]' line (train loss; train accuracy in %; main.py prints every 10th batch, "
        "so the last one is up to 9 batches before the epoch's end) and the ' * Accuracy' test accuracy in %, "
        "as printed. Derived by scripts/official_curves.py.")


def git(clone: str, *args: str) -> str:
    return subprocess.run(["git", "-C", clone, *args], check=True, capture_output=True, text=True).stdout


def derive(clone: str) -> dict:
    """The contents of official_curves.json from the clone at `clone`."""
    commit = git(clone, "rev-parse", "HEAD").strip()
    curves = {}
    for name, config_path in LOGS.items():
        log = f"log/{name}.txt"
        config = load_config_file(config_path)
        recipe = {key: config_value(config, key) for key in RECIPE_KEYS}
        curves[name] = {"log": log, "config": config_path, "recipe": recipe,
                        **parse_log(git(clone, "show", f"{commit}:{log}"), log)}
    return {"source": {"repository": REPOSITORY, "commit": commit,
                       "date": git(clone, "show", "-s", "--format=%cs", commit).strip()},
            "note": NOTE, "curves": curves}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", help="a clone of the official MA-Net repository (bare or not)")
    parser.add_argument("--output", default=str(CURVES_FILE), help="default: %(default)s")
    args = parser.parse_args(argv)
    data = derive(args.clone)
    text = json.dumps(data, indent=1)
    # a column a line
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    Path(args.output).write_text(text + "\n")
    for name, c in data["curves"].items():
        best = max(c["test_accuracy"])
        epoch = c["test_accuracy"].index(best) + 1
        print(f"{name}: {len(c['test_accuracy'])} epochs, best {best:.2f}% at epoch {epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
