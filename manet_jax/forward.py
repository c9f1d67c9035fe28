"""The one forward pass: MA-Net's logits per head, for every user of the model.

The train step differentiates it, the eval step takes metrics of it, and predict, export, compare
and the benchmark run it; `mesh.data_parallel` jits it over a mesh, and `module_for` builds the
module that runs best on the mesh's devices.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from manet_jax import mesh as mesh_lib
from manet_jax.bundle import ModelSpec
from manet_jax.models import BETA, MANet, branch_execution_for, fused_logits

HEADS = ("fused", "local", "global")  # beta * local + (1 - beta) * global (the prediction), then each branch
Logits = dict[str, jax.Array]


def forward(module: MANet, variables: dict[str, Any], images: jax.Array, beta: float = BETA, *,
            train: bool = False, capture: bool = False) -> tuple[Logits, dict[str, Any]]:
    """(logits per head of HEADS, updated collections) for images (N, H, W, 3) in [0, 1].

    With `train` BatchNorm uses and updates the batch statistics (`batch_stats` in the
    collections); with `capture` the collections hold the sown `intermediates`.
    """
    mutable = [name for name, on in (("batch_stats", train), ("intermediates", capture)) if on]
    (local, global_), collections = module.apply(variables, images, train=train, mutable=mutable)
    return {"fused": fused_logits(local, global_, beta), "local": local, "global": global_}, collections


def module_for(spec: ModelSpec, mesh: Mesh) -> MANet:
    """The bundle's module with the branch execution that suits the mesh's devices."""
    return spec.module(branch_execution_for(mesh_lib.platform(mesh)))
