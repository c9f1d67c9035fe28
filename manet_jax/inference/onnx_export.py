"""Exporting a model as ONNX: the jaxpr of the serving computation, converted by jax2onnx.

jax2onnx (0.17) mistranslates or refuses three things MA-Net's jaxpr holds, so the jaxpr is first
rewritten in primitives it lowers faithfully (`plain_jaxpr`) and the ONNX graph then mended
(`nchw_max_pools`): a `reshape` with `dimensions` (batching emits them for the vmapped local
branches; jax2onnx drops the transpose they ask for), a `pad` of a symbolic batch (small inputs'
matrix-product convolutions; its lowering fails), and a max pool over NHWC (lowered as a 4-D
MaxPool, which ONNX Runtime refuses).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, jaxpr_as_fun

from manet_jax.bundle import Bundle
from manet_jax.errors import ManetError
from manet_jax.inference.onnx_runtime import ONNX_FILE
from manet_jax.inference.predictor import OUTPUTS
from manet_jax.inference.quantize import INT8, quantize_int8
from manet_jax.inference.stablehlo import input_spec, serving_fn, write_metadata

JAX2ONNX = "jax2onnx==0.17.1"  # the release the rewrites below were made for and tested with
# Call primitives whose inner jaxpr (under this parameter) `plain_jaxpr` inlines.
INLINED = {"jit": "jaxpr", "custom_jvp_call": "call_jaxpr"}


class OnnxExportError(ManetError):
    """The model cannot be exported as ONNX."""


def export_onnx(bundle: Bundle, directory: Path, calibration: np.ndarray | None = None) -> Path:
    """Writes `manet.onnx`: input `images` float32 (batch, S, S, 3) RGB in [0, 1], the batch size
    dynamic -> the OUTPUTS in their order, float32 (batch, classes), with the variables as
    initializers; and the export's metadata. With `calibration` (images as `quantize_int8` takes
    them) the model is quantized to int8."""
    if calibration is not None:
        with tempfile.TemporaryDirectory(prefix="manet-onnx-") as scratch:
            export_onnx(bundle, Path(scratch))
            return quantized_export(bundle, Path(scratch), directory, calibration)
    size = bundle.spec.image_size
    batch, = jax_export.symbolic_shape("batch")
    serve, variables = serving_fn(bundle), bundle.variables
    model = onnx_model(lambda x: list(map(serve(variables, x).get, OUTPUTS)),
                       jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), "images", OUTPUTS)
    path = directory / ONNX_FILE
    path.write_bytes(model.SerializeToString())
    write_metadata(directory, bundle, "onnx", {"images": input_spec(bundle, "float32")}, ["onnx"])
    return path


def quantized_export(bundle: Bundle, float_export: Path, directory: Path, calibration: np.ndarray) -> Path:
    """Writes into `directory` the float32 ONNX export of `bundle` in `float_export` quantized to
    int8 (`quantize_int8`, calibrated on `calibration`), with its metadata."""
    path = directory / ONNX_FILE
    quantize_int8(float_export / ONNX_FILE, path, calibration)
    write_metadata(directory, bundle, "onnx", {"images": input_spec(bundle, "float32")}, ["onnx"], INT8)
    return path


def onnx_model(fn: Callable[[jax.Array], list[jax.Array]], spec: jax.ShapeDtypeStruct, input_name: str,
               output_names: Sequence[str]) -> Any:
    """The onnx.ModelProto of `fn` on inputs like `spec` (its dimensions may be symbolic): jax2onnx's
    conversion of the rewritten jaxpr (`plain_jaxpr`), its max pools mended (`nchw_max_pools`)."""
    try:  # only when exporting
        from jax2onnx import to_onnx
    except ImportError as e:
        raise OnnxExportError(f"--format onnx needs jax2onnx ({e}): pip install -e '.[onnx]' && "
                              f"pip install --no-deps {JAX2ONNX}") from e
    traced = jax.make_jaxpr(fn)(spec)
    plain = jax.make_jaxpr(functools.partial(plain_jaxpr, traced))(spec)
    # onnx_ir warns once per intermediate value whose type jax2onnx leaves unset (it then writes no
    # value_info for it, which nothing needs): noise to whoever exports.
    serde_log = logging.getLogger("onnx_ir")
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)
    try:
        model = to_onnx(jaxpr_as_fun(plain), [spec], model_name="manet", input_names=[input_name],
                        output_names=list(output_names))
    finally:
        serde_log.setLevel(level)
    return nchw_max_pools(model)


def plain_jaxpr(closed: ClosedJaxpr, *args: Any) -> list[Any]:
    """Evaluates `closed` on `args` (for the caller to trace) with nested `jit` and
    `custom_jvp_call` equations inlined, each `reshape` with `dimensions` as a transpose and a
    plain reshape, and each `pad` as `padded_by_concatenation`; other nested computations (scan,
    cond, ...), which could hide either, are refused."""
    env = dict(zip(closed.jaxpr.constvars, closed.consts)) | dict(zip(closed.jaxpr.invars, args))

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, Literal) else env[atom]

    for eqn in closed.jaxpr.eqns:
        values, params, name = [read(atom) for atom in eqn.invars], eqn.params, eqn.primitive.name
        if name in INLINED:
            outs = plain_jaxpr(params[INLINED[name]], *values)
        elif name == "reshape" and params["dimensions"] is not None:
            outs = [jax.lax.reshape(jnp.transpose(values[0], params["dimensions"]), params["new_sizes"])]
        elif name == "pad":
            outs = [padded_by_concatenation(*values, params["padding_config"])]
        elif any(isinstance(value, (ClosedJaxpr, Jaxpr)) for value in params.values()):
            raise OnnxExportError(f"cannot export `{name}`: a nested computation the export does not rewrite")
        else:
            outs = eqn.primitive.bind(*values, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(atom) for atom in closed.jaxpr.outvars]


def padded_by_concatenation(x: jax.Array, value: jax.Array, config: Sequence[tuple[int, int, int]]) -> jax.Array:
    """`lax.pad(x, value, config)` for edge padding, as concatenations with blocks of `value`."""
    for axis, (low, high, interior) in enumerate(config):
        if min(low, high) < 0 or interior:
            raise OnnxExportError(f"cannot export the padding {config}: only edge padding")
        before = [jnp.broadcast_to(value, (*x.shape[:axis], low, *x.shape[axis + 1:]))] if low else []
        after = [jnp.broadcast_to(value, (*x.shape[:axis], high, *x.shape[axis + 1:]))] if high else []
        if before or after:
            x = jnp.concatenate(before + [x] + after, axis)
    return x


def nchw_max_pools(model: Any) -> Any:
    """`model` (an onnx.ModelProto) with jax2onnx's NHWC max pools as ONNX Runtime runs them: each
    chain Unsqueeze, Unsqueeze, MaxPool over (N, H, W, C), Squeeze becomes Transpose to NCHW, a
    MaxPool over (H, W), Transpose back."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replacements: dict[str, list[Any]] = {}  # by first output
    removed_inputs: set[str] = set()
    for pool in [node for node in graph.node if node.op_type == "MaxPool"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        if len(kernel) == 2:
            continue
        strides, pads = list(attrs.get("strides", [1] * len(kernel))), list(attrs.get("pads", [0] * 2 * len(kernel)))
        inner = producer.get(pool.input[0])
        outer = producer.get(inner.input[0]) if inner is not None else None
        after = consumers.get(pool.output[0], [])

        def axes(node: Any) -> list[int] | None:
            tensor = initializers.get(node.input[1]) if node is not None and len(node.input) == 2 else None
            return None if tensor is None else numpy_helper.to_array(tensor).tolist()

        nhwc = (len(kernel) == 4 and kernel[0::3] == strides[0::3] == [1, 1] and not any(pads[i] for i in (0, 3, 4, 7))
                and set(attrs) <= {"kernel_shape", "strides", "pads", "dilations"}
                and list(attrs.get("dilations", [1] * 4)) == [1] * 4
                and [getattr(n, "op_type", None) for n in (outer, inner, *after)]
                == ["Unsqueeze", "Unsqueeze", "Squeeze"]
                and (axes(outer), axes(inner), axes(after[0])) == ([0], [1], [0, 1]))
        if not nhwc:
            raise OnnxExportError(f"{pool.name or pool.output[0]}: a MaxPool that ONNX Runtime cannot run ({attrs})")
        nchw, pooled = f"{pool.output[0]}_nchw", f"{pool.output[0]}_pooled"
        replacements[outer.output[0]] = [
            helper.make_node("Transpose", [outer.input[0]], [nchw], perm=[0, 3, 1, 2]),
            helper.make_node("MaxPool", [nchw], [pooled], name=pool.name, kernel_shape=kernel[1:3],
                             strides=strides[1:3], pads=[pads[1], pads[2], pads[5], pads[6]]),
            helper.make_node("Transpose", [pooled], [after[0].output[0]], perm=[0, 2, 3, 1])]
        replacements.update({inner.output[0]: [], pool.output[0]: [], after[0].output[0]: []})
        removed_inputs.update([*outer.input[1:], *inner.input[1:], *after[0].input[1:]])
    nodes = [new for node in graph.node for new in replacements.get(node.output[0], [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    unused = removed_inputs - {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model
