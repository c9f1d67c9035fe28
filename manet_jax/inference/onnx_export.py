"""Exporting a model as ONNX through jax2onnx, and running the export with ONNX Runtime."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax import export as jax_export
from jax.extend.core import ClosedJaxpr, Literal, Var, jaxpr_as_fun

from manet_jax.bundle import Bundle, ModelSpec
from manet_jax.errors import ManetError
from manet_jax.inference.predictor import OUTPUTS
from manet_jax.inference.stablehlo import METADATA, input_spec, serving_fn, write_metadata

ONNX_FILE = "manet.onnx"
# Below this input size some local-branch maps are smaller than a kernel and their convolutions
# become padded matrix products (models/layers.py); jax2onnx cannot lower a padding of a
# symbolic batch.
MIN_IMAGE_SIZE = 224
# Call primitives whose inner jaxpr (under this parameter) the export inlines.
INLINED = {"jit": "jaxpr", "custom_jvp_call": "call_jaxpr"}


class OnnxExportError(ManetError):
    """The model cannot be exported as ONNX."""


def padded_by_concatenation(x: jax.Array, value: jax.Array, config: Sequence[tuple[int, int, int]]) -> jax.Array:
    """`lax.pad(x, value, config)` for edge padding only, as concatenations with blocks of `value`:
    jax2onnx 0.17 cannot lower a `pad` whose operand has a symbolic dimension."""
    for axis, (low, high, interior) in enumerate(config):
        if min(low, high) < 0 or interior:
            raise OnnxExportError(f"cannot export the padding {config}")
        blocks = [jnp.broadcast_to(value, (*x.shape[:axis], size, *x.shape[axis + 1:])) for size in (low, high)]
        x = jnp.concatenate([b for b, size in ((blocks[0], low), (x, 1), (blocks[1], high)) if size], axis)
    return x


def plain_jaxpr(closed: ClosedJaxpr, *args: Any) -> list[Any]:
    """Evaluates `closed` on `args` (traced again by the caller) in the primitives jax2onnx lowers
    faithfully: nested `jit` and `custom_jvp_call` equations inlined, a `reshape` with `dimensions`
    (a transpose first, which batching emits; jax2onnx 0.17 drops the `dimensions`) written as
    transpose then reshape, and `pad` as concatenation (`padded_by_concatenation`)."""
    env: dict[Var, Any] = dict(zip(closed.jaxpr.constvars, closed.consts))
    env.update(zip(closed.jaxpr.invars, args))

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, Literal) else env[atom]

    for eqn in closed.jaxpr.eqns:
        values, params = [read(atom) for atom in eqn.invars], eqn.params
        if eqn.primitive.name in INLINED:
            outs = plain_jaxpr(params[INLINED[eqn.primitive.name]], *values)
        elif eqn.primitive.name == "reshape" and params["dimensions"] is not None:
            outs = [jax.lax.reshape(jnp.transpose(values[0], params["dimensions"]), params["new_sizes"])]
        elif eqn.primitive.name == "pad":
            outs = [padded_by_concatenation(*values, params["padding_config"])]
        else:
            outs = eqn.primitive.bind(*values, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(atom) for atom in closed.jaxpr.outvars]


def nchw_max_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each NHWC max pool as ONNX Runtime runs it: jax2onnx lowers
    `lax.reduce_window_max` over (N, H, W, C) as Unsqueeze, Unsqueeze, a MaxPool with a 4-D window
    and Squeeze, which ONNX Runtime refuses ("Unsupported pooling size"); each such chain becomes
    Transpose to NCHW, a 2-D MaxPool over H and W, Transpose back.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for pool in [node for node in graph.node if node.op_type == "MaxPool"]:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
        kernel = list(attrs["kernel_shape"])
        if len(kernel) == 2:
            continue
        strides = list(attrs.get("strides", [1] * len(kernel)))
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        inner, (squeeze,) = producer[pool.input[0]], consumers[pool.output[0]]
        outer = producer[inner.input[0]]
        if (len(kernel) != 4 or kernel[0::3] != [1, 1] or strides[0::3] != [1, 1] or any(pads[i] for i in (0, 3, 4, 7))
                or attrs.get("dilations", [1] * 4) != [1] * 4 or not inner.op_type == outer.op_type == "Unsqueeze"
                or squeeze.op_type != "Squeeze"):
            raise OnnxExportError(f"{pool.name}: a MaxPool ONNX Runtime cannot run ({attrs})")
        nchw, pooled = f"{pool.name}_nchw", f"{pool.name}_pooled"
        replaced[id(outer)] = [
            onnx.helper.make_node("Transpose", [outer.input[0]], [nchw], perm=[0, 3, 1, 2]),
            onnx.helper.make_node("MaxPool", [nchw], [pooled], name=pool.name, kernel_shape=kernel[1:3],
                                  strides=strides[1:3], pads=[pads[1], pads[2], pads[5], pads[6]]),
            onnx.helper.make_node("Transpose", [pooled], [squeeze.output[0]], perm=[0, 2, 3, 1])]
        replaced.update({id(inner): [], id(pool): [], id(squeeze): []})
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def export_onnx(bundle: Bundle, directory: Path) -> Path:
    """Writes `manet.onnx`: input `images` float32 (batch, S, S, 3) RGB in [0, 1], the batch size
    dynamic -> the OUTPUTS in their order, float32 (batch, classes), with the variables as
    initializers.

    jax2onnx converts the jaxpr of `serving_fn`, the computation every export serves, rather than
    tracing the Flax module itself: while it traces it replaces some Flax and jax.numpy functions
    with versions that do not take `nn.vmap` (the local branches) or positional pooling windows.
    """
    try:
        from jax2onnx import to_onnx  # only when exporting
    except ImportError as e:
        raise OnnxExportError(f"--format onnx needs jax2onnx ({e}): pip install -e '.[onnx]' && "
                              "pip install --no-deps jax2onnx==0.17.1") from e
    size = bundle.spec.image_size
    if size < MIN_IMAGE_SIZE:
        raise OnnxExportError(f"--image-size {size}: an ONNX export needs at least {MIN_IMAGE_SIZE}")
    batch, = jax_export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    serve, variables = serving_fn(bundle), bundle.variables
    jaxpr = jax.make_jaxpr(lambda x: list(map(serve(variables, x).get, OUTPUTS)))(images)
    jaxpr = jax.make_jaxpr(functools.partial(plain_jaxpr, jaxpr))(images)
    path = directory / ONNX_FILE
    model = to_onnx(jaxpr_as_fun(jaxpr), [images], model_name="manet", input_names=["images"],
                    output_names=list(OUTPUTS))
    onnx.save(nchw_max_pools(model), path)
    write_metadata(directory, bundle, "onnx", {"images": input_spec(bundle, "float32")}, ["onnx"])
    return path


class OnnxPredictor:
    """Runs an ONNX export with ONNX Runtime on the CPU: `Predictor`'s interface (no MAPS)."""

    def __init__(self, directory: Path, batch_size: int = 32, threads: int | None = None):
        try:
            import onnxruntime as ort  # only when used
        except ImportError as e:
            raise OnnxExportError(f"ONNX Runtime is not installed ({e}): pip install -e '.[onnx]'") from e

        metadata = json.loads((directory / METADATA).read_text()) if (directory / METADATA).is_file() else {}
        if metadata.get("format") != "onnx":
            raise OnnxExportError(f"--checkpoint {directory}: not an ONNX export (python -m manet_jax.export "
                                  f"--format onnx makes one)")
        self.spec = ModelSpec(metadata["class_names"], metadata["image_size"])
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """OUTPUTS for (N, S, S, 3) float32 images in [0, 1]."""
        results = [self._session.run(list(OUTPUTS), {"images": images[start:start + self.batch_size]})
                   for start in range(0, len(images), self.batch_size)]
        return {key: np.concatenate([r[i] for r in results]) for i, key in enumerate(OUTPUTS)}
