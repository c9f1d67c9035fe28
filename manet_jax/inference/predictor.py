"""Batched prediction with a model bundle, sharded over all devices."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from manet_jax.bundle import Bundle
from manet_jax.forward import forward, module_for
from manet_jax.mesh import data_parallel, make_mesh, pad_batch, replicate
from manet_jax.models import MANet, local_attention_map

OUTPUTS = ("logits_local", "logits_global", "probabilities", "probabilities_local", "probabilities_global")
MAPS = ("attention", "cam")


def outputs(module: MANet, beta: float, variables: dict, images: jax.Array, maps: bool = False
            ) -> dict[str, jax.Array]:
    """OUTPUTS: both branches' logits, the class probabilities (softmax of the logits fused with
    `beta`) and each branch's own probabilities; with `maps` also MAPS, the local branches' tiled
    CBAM spatial attention (N, h, w) and the global branch's class activation map for the
    predicted class (N, h', w')."""
    logits, collections = forward(module, variables, images, beta, capture=maps)
    out = {"logits_local": logits["local"], "logits_global": logits["global"],
           "probabilities": jax.nn.softmax(logits["fused"]), "probabilities_local": jax.nn.softmax(logits["local"]),
           "probabilities_global": jax.nn.softmax(logits["global"])}
    if maps:
        intermediates = collections["intermediates"]
        features = intermediates["layer4_2"]["output"][0]  # (N, h', w', 512)
        predicted = jax.nn.one_hot(out["probabilities"].argmax(-1), module.num_classes)
        out["attention"] = local_attention_map(intermediates)
        out["cam"] = jnp.einsum("nhwc,ck,nk->nhw", features.astype(jnp.float32),
                                variables["params"]["fc_2"]["kernel"], predicted)
    return out


@functools.cache
def _compiled(module: MANet, beta: float, maps: bool, mesh: Mesh) -> Callable:
    """`outputs` over `mesh`, compiled once per process and argument set."""
    return data_parallel(functools.partial(outputs, module, beta, maps=maps), mesh)


class Predictor:
    """Runs a bundle's model on batches of preprocessed faces, split over all devices (see `mesh`).

    Batches are padded to `batch_size` (rounded up to a multiple of the device count) so that
    the forward compiles once.
    """

    def __init__(self, bundle: Bundle, batch_size: int = 32, maps: bool = False):
        mesh = make_mesh()
        self.spec = bundle.spec
        self.batch_size = -(-batch_size // mesh.size) * mesh.size
        self._variables = replicate(bundle.variables, mesh)
        self._forward = _compiled(module_for(bundle.spec, mesh), bundle.spec.beta, maps, mesh)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """OUTPUTS (and MAPS) for (N, S, S, 3) float32 images in [0, 1]."""
        results = []
        for start in range(0, len(images), self.batch_size):
            batch = pad_batch({"image": images[start:start + self.batch_size]}, self.batch_size)
            out = jax.device_get(self._forward(self._variables, batch["image"]))
            results.append({k: v[batch["mask"] > 0] for k, v in out.items()})
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}
