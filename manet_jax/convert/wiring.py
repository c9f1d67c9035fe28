"""Which multi-scale wiring were MA-Net weights trained with? Their BatchNorm statistics say.

The two wirings (`MULTISCALE_WIRINGS`) have the same variables, but cascade B's BatchNorms see
other inputs in each: under "2021" `bn2_2_1` normalises conv2_2_1(chunk 1), under "2023"
conv2_2_1(ReLU(b_2) + chunk 1), and so on. Training leaves in each BatchNorm's running mean and
variance the statistics of the inputs it saw. So faces run through the pre-extractor and the
multi-scale blocks in train mode give cascade-B batch statistics close to the stored ones under
the wiring the weights were trained with, and far from them under the other. Cascade A's
BatchNorms (and `bn1`) see the same kind of input under both wirings: how close their statistics
come shows how well the faces stand in for the training data at all.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from manet_jax.data.face_renderer import CLASSES, render_face
from manet_jax.models import MULTISCALE_WIRINGS, MANet
from manet_jax.models.layers import BatchNorm

BLOCKS = tuple(f"{layer}.{block}" for layer in ("layer3_2", "layer4_2") for block in ("0", "1"))
CASCADE_A = ("bn1", *(f"bn1_2_{k}" for k in range(1, 5)))
CASCADE_B = tuple(f"bn2_2_{k}" for k in range(1, 5))
CHECK_IMAGES = 16  # faces per check: the batch whose statistics are compared
CLEAR_RATIO = 2.0  # the other wiring's distance over the fitting one's, from which the evidence is clear
FACES_SEED = 20210121


class _MultiScalePath(MANet):
    """MANet without the local branch: the pre-extractor and the multi-scale module (global logits)."""

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.multi_scale(self.pre_extractor(images.astype(self.dtype), train), train)


def synthetic_faces(count: int, size: int) -> np.ndarray:
    """`count` synthetic faces (the `synthetic_faces` dataset's drawing, all seven expressions in
    turn), (count, size, size, 3) float32 in [0, 1]."""
    return np.stack([render_face(i % len(CLASSES), size, np.random.default_rng((FACES_SEED, i)))
                     for i in range(count)]).astype(np.float32) / 255


@functools.cache
def _updated_statistics(wiring: str, num_classes: int):
    model = _MultiScalePath(num_classes, multiscale_wiring=wiring)
    return jax.jit(lambda variables, images: model.apply(variables, images, train=True,
                                                         mutable=["batch_stats"])[1]["batch_stats"])


def batch_statistics(variables: dict[str, Any], images: np.ndarray, wiring: str) -> dict[str, tuple]:
    """'<block>.<bn>' -> (mean, unbiased variance) of that multi-scale BatchNorm's input over
    `images` (N, H, W, 3), all BatchNorms in train mode, under `wiring`."""
    # With zero running statistics one train-mode update leaves momentum * the batch statistics.
    zeros = jax.tree.map(np.zeros_like, variables["batch_stats"])
    update = _updated_statistics(wiring, np.shape(variables["params"]["fc_2"]["bias"])[0])
    stats = jax.device_get(update({"params": variables["params"], "batch_stats": zeros},
                                  jnp.asarray(images, jnp.float32)))
    out = {}
    for block in BLOCKS:
        layer, index = block.split(".")
        for bn in CASCADE_A + CASCADE_B:
            moments = stats[layer][index][bn]
            out[f"{block}.{bn}"] = (moments["mean"] / BatchNorm.momentum, moments["var"] / BatchNorm.momentum)
    return out


def statistics_distance(mean: np.ndarray, var: np.ndarray, running_mean: np.ndarray,
                        running_var: np.ndarray, eps: float = BatchNorm.epsilon) -> float:
    """How far batch statistics are from running ones, over channels: the root mean square of the
    mean's shift in running standard deviations and of the log variance ratio (0: identical)."""
    shift = (mean - running_mean) ** 2 / (running_var + eps)
    scale = np.log((np.maximum(var, 0) + eps) / (np.maximum(running_var, 0) + eps)) ** 2
    return float(np.sqrt(np.mean(shift + scale)))


def _rms(values: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


@dataclasses.dataclass(frozen=True)
class WiringFit:
    """Distances of the batch statistics from the stored ones: {wiring: {'<block>.<bn>': d}}."""

    distances: dict[str, dict[str, float]]
    num_images: int
    image_size: int

    def cascade(self, wiring: str, block: str, names: tuple[str, ...]) -> float:
        """The RMS distance of `block`'s BatchNorms `names` under `wiring`."""
        return _rms([self.distances[wiring][f"{block}.{name}"] for name in names])

    def overall(self, wiring: str) -> float:
        """The RMS distance of every cascade-B BatchNorm under `wiring`."""
        return _rms([self.distances[wiring][f"{block}.{bn}"] for block in BLOCKS for bn in CASCADE_B])

    def best(self, block: str | None = None) -> str:
        """The wiring whose cascade-B statistics fit best (in `block`, else overall)."""
        fit = self.overall if block is None else lambda wiring: self.cascade(wiring, block, CASCADE_B)
        return min(MULTISCALE_WIRINGS, key=fit)

    def ratio(self, block: str | None = None) -> float:
        """The other wiring's cascade-B distance over the fitting one's (in `block`, else overall)."""
        fit = self.overall if block is None else lambda wiring: self.cascade(wiring, block, CASCADE_B)
        best = self.best(block)
        other = next(wiring for wiring in MULTISCALE_WIRINGS if wiring != best)
        return fit(other) / max(fit(best), np.finfo(np.float32).tiny)

    @property
    def clear(self) -> bool:
        """Whether the evidence is clear: every block fits the same wiring, by CLEAR_RATIO or more."""
        best = self.best()
        return all(self.best(block) == best and self.ratio(block) >= CLEAR_RATIO for block in BLOCKS)

    def table(self) -> str:
        """Per block: cascade A's and B's distances under each wiring, the fitting wiring, the ratio."""
        columns = "".join(f" {f'{wiring}: A':>9} {'B':>6}" for wiring in MULTISCALE_WIRINGS)
        lines = [f"{'block':<12}{columns}  fits  ratio"]
        for block in (*BLOCKS, None):
            cells = "".join(
                f" {'' if block is None else f'{self.cascade(wiring, block, CASCADE_A):.3f}':>9} "
                f"{self.overall(wiring) if block is None else self.cascade(wiring, block, CASCADE_B):>6.3f}"
                for wiring in MULTISCALE_WIRINGS)
            lines.append(f"{block or 'overall':<12}{cells}  {self.best(block):<4}  {self.ratio(block):5.1f}")
        return "\n".join(lines)

    def verdict(self) -> str:
        best = self.best()
        other = next(wiring for wiring in MULTISCALE_WIRINGS if wiring != best)
        distances = f"cascade-B distance {self.overall(best):.3f}, against {self.overall(other):.3f} under {other}"
        if self.clear:
            return f"the weights fit the {best} multi-scale wiring ({distances})"
        return (f"weak evidence: the weights fit the {best} wiring a little better ({distances}; a clear "
                f"verdict needs every block to fit one wiring by a factor of {CLEAR_RATIO:g})")


def fit_wirings(variables: dict[str, Any], images: np.ndarray) -> WiringFit:
    """How well MA-Net `variables` fit each wiring, judged on `images` (N, S, S, 3) in [0, 1]."""
    distances = {}
    for wiring in MULTISCALE_WIRINGS:
        statistics = batch_statistics(variables, images, wiring)
        distances[wiring] = {}
        for key, (mean, var) in statistics.items():
            layer, index, bn = key.split(".")
            stored = variables["batch_stats"][layer][index][bn]
            distances[wiring][key] = statistics_distance(mean, var, np.asarray(stored["mean"]),
                                                         np.asarray(stored["var"]))
    return WiringFit(distances, len(images), images.shape[1])
