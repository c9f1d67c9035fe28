"""A checkpoint ready for inference, and batched prediction sharded over all devices."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from manet_jax.checkpoints import load_variables
from manet_jax.data.labels import CANONICAL_CLASSES
from manet_jax.models import BETA, MANet, fused_logits, local_attention_map
from manet_jax.training.config import CONFIG_FILE
from manet_jax.training.sharding import batch_sharded, make_mesh, replicate, replicated

DEFAULT_IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """MA-Net variables with their class names, input resolution, fusion weight and compute dtype."""

    variables: dict[str, Any]
    class_names: tuple[str, ...]
    image_size: int = DEFAULT_IMAGE_SIZE
    beta: float = BETA
    dtype: str = "float32"

    @property
    def module(self) -> MANet:
        return MANet(len(self.class_names), dtype=jnp.dtype(self.dtype))


def load_model(checkpoint: epath.PathLike, image_size: int | None = None) -> InferenceModel:
    """The model in a converted checkpoint or trainer workdir (see `checkpoints.load_variables`).

    A workdir's resolved config gives the input size, beta and dtype; `image_size` overrides its
    size, and a converted checkpoint has none (224, the paper's, unless given).
    """
    variables, header = load_variables(checkpoint)
    config_file = epath.Path(checkpoint) / CONFIG_FILE
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    num_classes = header["num_classes"]
    names = header.get("class_names") or (
        CANONICAL_CLASSES[:num_classes] if num_classes <= len(CANONICAL_CLASSES)
        else [f"class_{i}" for i in range(num_classes)])
    size = image_size if image_size is not None else config.get("image_size", DEFAULT_IMAGE_SIZE)
    if size < 16 or size % 16:
        raise ValueError(f"--image-size {size}: MA-Net needs a positive input size divisible by 16 "
                         "(224 as in the paper)")
    return InferenceModel(variables, tuple(names), size, config.get("beta", BETA), config.get("dtype", "float32"))


def _heads(logits_local: jax.Array, logits_global: jax.Array, beta: float) -> dict[str, jax.Array]:
    return {"logits_local": logits_local, "logits_global": logits_global,
            "probabilities": jax.nn.softmax(fused_logits(logits_local, logits_global, beta)),
            "probabilities_local": jax.nn.softmax(logits_local),
            "probabilities_global": jax.nn.softmax(logits_global)}


def outputs(module: MANet, beta: float, variables: dict, images: jax.Array) -> dict[str, jax.Array]:
    """Both branches' logits, the class probabilities (softmax of the logits fused with `beta`)
    and each branch's own probabilities."""
    return _heads(*module.apply(variables, images, train=False), beta)


def outputs_with_maps(module: MANet, beta: float, variables: dict, images: jax.Array) -> dict[str, jax.Array]:
    """`outputs` plus the local branches' tiled CBAM spatial attention (N, h, w) and the global
    branch's class activation map for the predicted class (N, h', w'), both from intermediates."""
    (logits_local, logits_global), state = module.apply(variables, images, train=False,
                                                        mutable=["intermediates"])
    intermediates = state["intermediates"]
    heads = _heads(logits_local, logits_global, beta)
    features = intermediates["layer4_2"]["output"][0]  # (N, h', w', 512)
    predicted = jax.nn.one_hot(heads["probabilities"].argmax(-1), module.num_classes)
    return {**heads, "attention": local_attention_map(intermediates),
            "cam": jnp.einsum("nhwc,ck,nk->nhw", features.astype(jnp.float32),
                              variables["params"]["fc_2"]["kernel"], predicted)}


@functools.cache
def _jitted(fn: Callable, module: MANet, beta: float, mesh: Mesh) -> Callable:
    """`fn(module, beta, variables, images)` jitted like the evaluator's step: variables replicated,
    images split along the mesh's data axis; compiled once per process and argument set."""
    return jax.jit(functools.partial(fn, module, beta), in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=replicated(mesh))


class Predictor:
    """Runs a model on batches of preprocessed faces, split over all devices (see `training.sharding`).

    Batches are padded to `batch_size` (rounded up to a multiple of the device count) so that
    the forward compiles once.
    """

    def __init__(self, model: InferenceModel, batch_size: int = 32, maps: bool = False):
        mesh = make_mesh()
        self.model = model
        self.batch_size = -(-batch_size // mesh.size) * mesh.size
        self._variables = replicate(model.variables, mesh)
        self._forward = _jitted(outputs_with_maps if maps else outputs, model.module, model.beta, mesh)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs (see `outputs`, `outputs_with_maps`) for (N, S, S, 3) float32 images in [0, 1]."""
        results = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *batch.shape[1:]), np.float32)
            padded[:len(batch)] = batch
            out = self._forward(self._variables, padded)
            results.append({k: np.asarray(v)[:len(batch)] for k, v in out.items()})
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}
