"""Golden numerics of the official PyTorch MA-Net, as stored in tests/data/.

Parameters and inputs are regenerated from the documented formula (a seeded NumPy draw per
state_dict entry); the figures produced by the reference model are read from the extracted
golden files (see scripts/extract_golden.py for how they were subsampled).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
GOLDEN_FILES = {7: DATA / "golden_seed0_7cls.npz", 8: DATA / "golden_seed1_8cls.npz"}
# The official code of the 2021 multi-scale wiring (aaf8788) on the 7-class set: only the arrays
# that differ from the 2023 wiring's are stored.
WIRING_2021_FILE = DATA / "golden_seed0_7cls_wiring2021.npz"


@functools.cache
def key_table() -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(key, shape, kind) for the 692 state_dict entries of the 7-class model, in order."""
    rows = []
    for line in (DATA / "manet_keys_7cls.txt").read_text().splitlines():
        _, key, shape, kind = line.split()
        rows.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split(",")), kind))
    return tuple(rows)


def _value(seed: int, index: int, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "bn_num_batches_tracked":
        return np.zeros((), np.int64)
    u = np.random.default_rng([seed, index]).random(shape)
    if kind in ("conv_weight", "linear_weight"):
        v = (2 * u - 1) * np.sqrt(3.0) / np.sqrt(np.prod(shape[1:]))
    elif kind == "linear_bias":
        v = 0.1 * (2 * u - 1)
    elif kind in ("bn_weight", "bn_running_var"):
        v = 0.5 + u
    elif kind == "bn_bias":
        v = 0.2 * (2 * u - 1)
    elif kind == "bn_running_mean":
        v = 0.1 * (2 * u - 1)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return v.astype(np.float32)


def state_dict(seed: int, num_classes: int) -> dict[str, np.ndarray]:
    """The golden formula's reference state_dict (reference key names, NCHW/OIHW layouts)."""
    out = {}
    for index, (key, shape, kind) in enumerate(key_table()):
        if key.startswith(("fc_1.", "fc_2.")):
            shape = (num_classes,) + shape[1:]
        out[key] = _value(seed, index, shape, kind)
    return out


def inputs(seed: int, batch: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (NCHW float32 in [0, 1]) and labels of the golden formula."""
    x = np.random.default_rng([seed, 1000000]).random((batch, 3, 224, 224)).astype(np.float32)
    y = np.random.default_rng([seed, 1000001]).integers(0, num_classes, size=batch)
    return x, y


@functools.cache
def load(num_classes: int, wiring: str = "2023") -> dict[str, np.ndarray]:
    """The golden figures of the official model of `wiring` ("2021": the 7-class set only)."""
    with np.load(GOLDEN_FILES[num_classes]) as f:
        figures = dict(f)
    if wiring == "2021":
        if num_classes != 7:
            raise ValueError("the 2021 wiring's goldens are of the 7-class set")
        with np.load(WIRING_2021_FILE) as f:
            figures |= dict(f)
    elif wiring != "2023":
        raise ValueError(f"no goldens of the multi-scale wiring {wiring!r}")
    return figures


def subsampled(golden: dict[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray, tuple, float]:
    """(flat index, values, full shape, full max abs) of a subsampled golden array."""
    return (golden[f"{key}@index"], golden[f"{key}@values"],
            tuple(golden[f"{key}@shape"]), float(golden[f"{key}@max_abs"]))


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of a against b."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
