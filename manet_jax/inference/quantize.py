"""int8 ONNX exports: ONNX Runtime's static quantization of a float32 export, in QDQ form.

Only the convolutions are quantized (their weights int8 per output channel, their inputs uint8 per
tensor, the ranges calibrated by min-max on the images given), the rest stays float32: quantizing
every op fails in ONNX Runtime 1.32's quantizer (an IndexError on a 0-d bias), and int8 activations
give a graph it refuses. int8 pays on CPUs with VNNI (AVX-512 VNNI or AVX-VNNI), where ONNX Runtime
runs the convolutions as int8 dot products.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from manet_jax.errors import ManetError

INT8 = "int8"
QUANTIZED_OPS = ("Conv",)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo's names
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "amx_int8",
              *VNNI_FLAGS)  # what decides the CPU's float32 and int8 speed


class QuantizeError(ManetError):
    """An export that cannot be quantized."""


def quantize_int8(float_model: Path, output: Path, images: np.ndarray) -> None:
    """Writes to `output` the int8 QDQ quantization of the float32 ONNX model `float_model`
    (input `images`), calibrated on `images` ((N, S, S, 3) float32 in [0, 1], the model's view)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches: Iterator[np.ndarray] = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(prefix="manet-quantize-") as scratch:
        prepared = Path(scratch, "prepared.onnx")
        try:
            # ONNX's shape inference and ONNX Runtime's graph optimisations (constants folded: the weights'
            # transposes, so that the convolutions' weights are initializers); its symbolic shape
            # inference fails on the export's matrix products
            quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=CalibrationMethod.MinMax)
        except Exception as e:  # the quantizer's errors have no public types
            raise QuantizeError(f"{output}: ONNX Runtime cannot quantize the export ({type(e).__name__}: {e})") from e


def cpu_info() -> dict[str, str]:
    """The fields of the host's first CPU in Linux's /proc/cpuinfo ('model name', 'cpu family',
    'flags', ...); empty elsewhere."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is not)."""
    return set(cpu_info().get("flags", "").split())


def has_vnni() -> bool:
    """Whether the host CPU has int8 dot products (VNNI), where int8 pays."""
    return bool(cpu_flags() & set(VNNI_FLAGS))


def runtime_note(precision: str) -> str:
    """What runs an ONNX export of `precision`, and, for int8 on a CPU without VNNI, that it may not pay."""
    if precision != INT8 or has_vnni():
        return f"ONNX Runtime, {precision}"
    return f"ONNX Runtime, {precision}; this CPU has no VNNI ({', '.join(VNNI_FLAGS)}): int8 may be no faster than float32"


def calibration_images(source: str, size: int, count: int, data_dir: str | None = None) -> np.ndarray:
    """The first `count` images of `source`, a folder of face crops (searched recursively, each
    image one face) or a dataset `NAME[:SPLIT]` (default: its evaluation split), as the model sees
    them: (N, size, size, 3) float32 in [0, 1], through the evaluator's preprocessing."""
    if Path(source).is_dir():
        from manet_jax.inference.images import ImageLoadError, find_images, load_image
        from manet_jax.inference.preprocess import eval_view
        views = []
        for path in find_images([source])[0]:
            try:
                views.append(eval_view(load_image(path).pixels, size))
            except ImageLoadError:
                continue
            if len(views) == count:
                break
        if not views:
            raise QuantizeError(f"--calibration {source}: holds no image to calibrate on")
        return np.stack(views)
    from manet_jax.data import pipeline
    name, _, split = source.partition(":")
    batch = next(pipeline.eval_iterator(name, data_dir, split=split or None, image_size=size, global_batch_size=count,
                                        process_index=0, process_count=1))
    return batch["image"][batch["mask"] > 0]
