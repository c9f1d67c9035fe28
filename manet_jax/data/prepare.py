"""Builds a dataset from its manual download: a thin wrapper over the TFDS builder.

  python -m manet_jax.data.prepare --dataset NAME [--manual-dir DIR] [--data-dir DIR] [--skip-corrupt]

NAME is one of raf_db, affectnet/7, affectnet/8, caer_s, sfew, fer2013, ferplus, fed_ro,
image_folder/7, image_folder/8 or synthetic_faces/<size> (no download). The manual dir defaults to
<data_dir>/downloads/manual/<dataset>; the data dir to `locations.default_data_dir()`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from manet_jax import cli
from manet_jax.data.builder_base import SKIPPED_METADATA
from manet_jax.data.locations import default_manual_dir, resolve_data_dir
from manet_jax.data.registry import make_builder, split_name


def prepare(dataset: str, manual_dir: str | None = None, data_dir: str | None = None,
            skip_corrupt: bool = False) -> str:
    """Builds `dataset` unless it is already prepared; returns the prepared dataset's folder."""
    data_dir = resolve_data_dir(data_dir)
    manual_dir = manual_dir or default_manual_dir(data_dir, split_name(dataset)[0])
    builder = make_builder(dataset, data_dir, skip_corrupt=skip_corrupt)
    if builder.is_prepared():
        print(f"{dataset} is already prepared in {builder.data_dir}")
        return str(builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
    skipped = {split: bad for split, bad in builder.info.metadata[SKIPPED_METADATA].items() if bad}
    for split, bad in skipped.items():
        print(f"{split}: skipped {len(bad)} missing or unreadable file(s):")
        print("\n".join(f"  {name}: {reason}" for name, reason in bad))
    sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{dataset} prepared in {builder.data_dir} ({sizes} examples)")
    return str(builder.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.data.prepare", __doc__)
    parser.add_argument("--dataset", required=True, help="e.g. raf_db, affectnet/7, image_folder/7")
    parser.add_argument("--manual-dir", help="the extracted download (default: "
                        "<data_dir>/downloads/manual/<dataset>)")
    parser.add_argument("--data-dir", help="where prepared datasets live (default: "
                        "$MANET_DATA_DIR, else the repository's data/, else ~/tensorflow_datasets)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="build without missing or undecodable images (they are listed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        prepare(args.dataset, args.manual_dir, args.data_dir, args.skip_corrupt)

    return cli.run(work, whole_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
