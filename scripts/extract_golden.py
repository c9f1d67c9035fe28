"""Copies the figures the test suite needs from the shared golden files into tests/data/.

Run by hand from the repository root when the golden files change:
        python scripts/extract_golden.py ../shared/golden
and, for the 2021 multi-scale wiring, on the full file `scripts/make_golden.py` wrote from a
clone of the official code checked out at aaf8788:
        python scripts/extract_golden.py --wiring-2021 manet_2021_seed0_7cls.npz
which keeps only the extracted arrays that differ from the 2023 wiring's (golden_seed0_7cls.npz).

Parameters and inputs are not copied: the tests regenerate them from the golden formula
(tests/golden.py). Large arrays (activations, full gradients, parameters after the step) are
stored as a fixed subsample: flat indices (C order, reference NCHW/OIHW layout) and values,
plus the full array's shape and max abs, so the files stay small.
"""

import sys
from pathlib import Path

import numpy as np

MAX_ELEMENTS = 4096
SCALARS_AND_SMALL = (
        "seed", "num_classes", "gain", "y", "fill_check", "param_keys",
        "logits", "logits_local", "logits_global",
        "logits_train", "logits_train_local", "logits_train_global",
        "loss", "loss_local", "loss_global", "grad_norm", "step_delta_norm",
        "grad_subset_keys", "logits_eval_f64", "logits_train_f64", "loss_f64", "grad_norm_f64",
)
SUBSAMPLED_GROUPS = ("act/", "grad/", "grad_f64/", "param_after_step/")


def subsample_index(size: int) -> np.ndarray:
    if size <= MAX_ELEMENTS:
        return np.arange(size, dtype=np.int64)
    return np.unique(np.linspace(0, size - 1, MAX_ELEMENTS).round().astype(np.int64))


def extract(src: Path) -> dict[str, np.ndarray]:
    """The arrays the tests read from the full golden file `src`."""
    golden = np.load(src)
    out = {}
    for key in golden.files:
        value = golden[key]
        if key in SCALARS_AND_SMALL or key.startswith("buffer_after/"):
            out[key] = value
        elif key.startswith(SUBSAMPLED_GROUPS):
            index = subsample_index(value.size)
            out[f"{key}@index"] = index
            out[f"{key}@values"] = value.reshape(-1)[index]
            out[f"{key}@shape"] = np.asarray(value.shape, np.int64)
            out[f"{key}@max_abs"] = np.abs(value).max()
    return out


def save(arrays: dict[str, np.ndarray], dst: Path) -> None:
    np.savez_compressed(dst, **arrays)
    print(f"{dst}: {len(arrays)} arrays, {dst.stat().st_size / 1024:.0f} KiB")


def main(argv: list[str]) -> None:
    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    data.mkdir(parents=True, exist_ok=True)
    if argv[:1] == ["--wiring-2021"]:
        with np.load(data / "golden_seed0_7cls.npz") as base:
            variant = {key: value for key, value in extract(Path(argv[1])).items()
                       if not (value.shape == base[key].shape and np.array_equal(value, base[key]))}
        save(variant, data / "golden_seed0_7cls_wiring2021.npz")
        return
    golden_dir = Path(argv[0] if argv else "../shared/golden")
    for name in ("manet_rng_seed0_7cls", "manet_rng_seed1_8cls"):
        save(extract(golden_dir / f"{name}.npz"), data / f"golden_{name.removeprefix('manet_rng_')}.npz")
    (data / "manet_keys_7cls.txt").write_text((golden_dir / "manet_keys_7cls.txt").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
