"""Accelerator chips by JAX device kind: peak TFLOP/s, memory, and interconnect bandwidths.

One table for the benchmark's fraction of peak and the TPU plan's roofline
(`python -m manet_jax.tpu_plan`). Bandwidths are bytes/s / 1e9; HBM in GiB.
"""

from __future__ import annotations

import dataclasses

PLATFORMS = ("cpu", "cuda", "tpu")  # JAX's platforms of these chips: what an export is lowered for


@dataclasses.dataclass(frozen=True)
class Chip:
    peak_tflops: tuple[float, float]  # dense (bfloat16, float32 as XLA computes it by default)
    hbm_gib: float | None = None  # data sheet
    usable_hbm_gib: float | None = None  # what the compiler lets one program use (measured)
    hbm_gb_s: float | None = None
    ici_gb_s: float | None = None  # inter-chip interconnect, per chip, all links, both directions
    dcn_gb_s: float | None = None  # data-center network, per chip


# GPUs: NVIDIA data sheets (dense; float32 convolutions and matmuls run as TF32 by default).
# TPUs: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (one JAX device per chip; XLA:TPU's default
# precision computes float32 matmuls and convolutions with bfloat16 passes at the bfloat16 rate).
# usable_hbm_gib: the "available HBM" of XLA:TPU's out-of-memory error (libtpu 0.0.42.1), checked
# by tests/test_tpu_plan.py. ICI: v5e 400, v5p 1200, v6e 800 GB/s bidirectional per chip (Cloud
# docs); v4 not stated there: 6 links x 45 GB/s each way (jax-ml.github.io/scaling-book/tpus).
# DCN per chip: v5p 50 Gbps (docs); v5e 6.4 and v6e 25.6 Tbps per 256-chip pod (docs); v4 unknown.
CHIPS: dict[str, Chip] = {
    "H100": Chip((989.4, 494.7)),
    "H200": Chip((989.4, 494.7)),
    "A100": Chip((312.0, 156.0)),
    "TPU v4": Chip((275.0, 275.0), hbm_gib=32, usable_hbm_gib=30.75, hbm_gb_s=1200, ici_gb_s=540),
    "TPU v5 lite": Chip((197.0, 197.0), hbm_gib=16, usable_hbm_gib=15.75, hbm_gb_s=819, ici_gb_s=400,
                        dcn_gb_s=6400 / 8 / 256),
    "TPU v5": Chip((459.0, 459.0), hbm_gib=95, usable_hbm_gib=95.74, hbm_gb_s=2765, ici_gb_s=1200,
                   dcn_gb_s=50 / 8),
    "TPU v6 lite": Chip((918.0, 918.0), hbm_gib=32, usable_hbm_gib=31.25, hbm_gb_s=1640, ici_gb_s=800,
                        dcn_gb_s=25600 / 8 / 256),
}


def chip(device_kind: str) -> Chip | None:
    """The chip whose name is the longest found in `device_kind` ('TPU v5 lite' before 'TPU v5')."""
    for name in sorted(CHIPS, key=len, reverse=True):
        if name in device_kind:
            return CHIPS[name]
    return None


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of one chip for compute `dtype` ('bfloat16' or 'float32'), if known."""
    found = chip(device_kind)
    return None if found is None else found.peak_tflops[dtype != "bfloat16"]
