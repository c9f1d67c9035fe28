"""One PNG per face: the face, the class probabilities, the local branches' CBAM spatial attention
laid over their quadrants, and the global branch's class activation map. For videos: frames with
their faces' boxes and labels drawn, and a timeline of each track's probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from manet_jax.inference.records import OK, Record

WIDTH, HEIGHT, DPI = 1280, 360, 100  # the PNG's size in pixels
OVERLAY_ALPHA = 0.5
BOX_COLOUR = (255, 0, 255)  # RGB: the boxes and labels drawn on video frames
TIMELINE_WIDTH, TIMELINE_TRACK_HEIGHT = 1000, 250  # the timeline PNG: pixels wide, pixels per track


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


def annotate_frame(pixels: np.ndarray, records: Sequence[Record]) -> np.ndarray:
    """A copy of the (H, W, 3) RGB frame with each face's box and `#track label probability` drawn."""
    out = pixels.copy()
    thickness = max(2, round(max(pixels.shape[:2]) / 300))
    for record in records:
        if record.status != OK:
            continue
        box = record.box
        cv2.rectangle(out, (box.x, box.y), (box.x + box.width - 1, box.y + box.height - 1), BOX_COLOUR, thickness)
        text = f"#{record.track} {record.label} {record.probabilities['fused'][record.label]:.0%}"
        cv2.putText(out, text, (box.x, max(box.y - 4 * thickness, 10 * thickness)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.25 * thickness, BOX_COLOUR, thickness, cv2.LINE_AA)
    return out


def save_timeline(path: Path, records: Sequence[Record], class_names: Sequence[str]) -> None:
    """Writes a PNG with a panel per track: its fused class probabilities (a line per class) over
    the frames' time in seconds. A video without faces gets one empty panel."""
    tracks: dict[int, list[Record]] = {}
    for record in records:
        if record.status == OK:
            tracks.setdefault(record.track, []).append(record)
    fig = Figure(figsize=(TIMELINE_WIDTH / DPI, TIMELINE_TRACK_HEIGHT * max(len(tracks), 1) / DPI), dpi=DPI)
    axes = fig.subplots(max(len(tracks), 1), 1, squeeze=False)[:, 0]
    start, end = min((r.time_s for r in records), default=0.0), max((r.time_s for r in records), default=0.0)
    for ax, (track, faces) in zip(axes, sorted(tracks.items())):
        for name in class_names:
            ax.plot([r.time_s for r in faces], [r.probabilities["fused"][name] for r in faces], marker=".",
                    label=name)
        ax.set_title(f"track {track}", fontsize="small")
    for ax in axes:
        ax.set_xlim(start, end if end > start else start + 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
    axes[-1].set_xlabel("time (s)")
    if tracks:
        axes[0].legend(loc="upper right", fontsize="small", ncol=len(class_names))
    fig.tight_layout()
    fig.savefig(path, format="png")
