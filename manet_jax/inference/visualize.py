"""One PNG per face: the face, the class probabilities, the local branches' CBAM spatial attention
laid over their quadrants, and the global branch's class activation map."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 1280, 360, 100  # the PNG's size in pixels
OVERLAY_ALPHA = 0.5


def _normalised(values: np.ndarray) -> np.ndarray:
    """`values` scaled to [0, 1] (min to max); a constant map becomes zeros."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def save_visualization(path: Path, face: np.ndarray, label: str, probabilities: Mapping[str, Mapping[str, float]],
                       attention: np.ndarray, cam: np.ndarray) -> None:
    """Writes a WIDTH x HEIGHT PNG for one face.

    `face` is the model input (S, S, 3) in [0, 1]; `probabilities` maps branch ('fused', 'local',
    'global') to class -> probability; `attention` is the tiled local attention (h, w) and `cam`
    the global CAM of the predicted class (h', w'). Both maps are stretched over the face with
    bilinear interpolation and shown min-max normalised.
    """
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1.3, 1, 1]})
    size = face.shape[0]
    extent = (0, size, size, 0)
    fused = probabilities["fused"]

    axes[0].imshow(face, extent=extent)
    axes[0].set_title(f"{label} ({fused[label]:.0%})")

    names = list(fused)
    rows = np.arange(len(names))
    axes[1].barh(rows, [fused[n] for n in names], color=["tab:red" if n == label else "tab:blue" for n in names],
                 label="fused")
    for branch, marker in (("local", "|"), ("global", "x")):
        if branch in probabilities:
            axes[1].scatter([probabilities[branch][n] for n in names], rows, marker=marker, color="k", zorder=3,
                            label=branch)
    axes[1].set_yticks(rows, names)
    axes[1].invert_yaxis()
    axes[1].set_xlim(0, 1)
    axes[1].legend(loc="lower right", fontsize="small")
    axes[1].set_title("probabilities")

    for ax, heat, title in ((axes[2], attention, "local: CBAM spatial attention"),
                            (axes[3], cam, f"global: CAM of {label}")):
        ax.imshow(face, extent=extent)
        ax.imshow(_normalised(heat), cmap="jet", alpha=OVERLAY_ALPHA, interpolation="bilinear", extent=extent,
                  vmin=0, vmax=1)
        ax.set_title(title)
    axes[2].axhline(size / 2, color="w", lw=1, ls="--")
    axes[2].axvline(size / 2, color="w", lw=1, ls="--")
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, format="png")
