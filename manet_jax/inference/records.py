"""Prediction records and their output: a terminal table, JSON or CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from manet_jax.inference.faces import Box

OK, NO_FACE, ERROR = "ok", "no face", "error"
BRANCHES = ("fused", "local", "global")


@dataclasses.dataclass
class Record:
    """One row of output: a detected face, or an image without faces, or an input that failed."""

    file: str
    status: str  # OK, NO_FACE or ERROR
    message: str = ""  # why an input failed
    face: int | None = None  # index of the face in its image, left to right
    box: Box | None = None  # in pixels of the upright original image
    label: str | None = None
    probabilities: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # branch -> class -> p
    visualization: str | None = None  # the PNG written for this face
    frame: int | None = None  # a video's: the frame's index in the file (or since the camera started)
    time_s: float | None = None  # the frame's time in seconds
    track: int | None = None  # the face's track id, the same while it stays in view


VIDEO_FIELDS = ("frame", "time_s", "track")  # written only when a record comes from a video
BOX_FIELDS = ("x", "y", "width", "height")  # a box as written (a detector's landmarks are not)


def _from_video(records: Sequence[Record]) -> bool:
    return any(record.frame is not None for record in records)


def json_row(record: Record, branches: Sequence[str] = BRANCHES[:1], video: bool = False) -> dict[str, object]:
    """`record` as a JSON object, with the probabilities of `branches` only, and the VIDEO_FIELDS
    only for a `video`'s records."""
    row = dataclasses.asdict(record)
    row["box"] = {key: row["box"][key] for key in BOX_FIELDS} if record.box else None  # not its landmarks
    row["probabilities"] = {b: p for b, p in record.probabilities.items() if b in branches}
    return row if video else {k: v for k, v in row.items() if k not in VIDEO_FIELDS}


def _write_json(path: Path, records: Sequence[Record], class_names: Sequence[str], branches: Sequence[str]) -> None:
    video = _from_video(records)
    path.write_text(json.dumps([json_row(record, branches, video) for record in records], indent=2) + "\n")


def _csv_row(record: Record, class_names: Sequence[str], branches: Sequence[str], video: bool) -> dict[str, object]:
    box = dataclasses.asdict(record.box) if record.box else {}
    row = {"file": record.file, "status": record.status, "message": record.message,
           **({key: getattr(record, key) for key in VIDEO_FIELDS} if video else {}), "face": record.face,
           **{key: box.get(key) for key in BOX_FIELDS}, "label": record.label}
    for branch in branches:
        probs = record.probabilities.get(branch, {})
        row.update({f"{branch}_{name}": probs.get(name) for name in class_names})
    row["visualization"] = record.visualization
    return row


def _write_csv(path: Path, records: Sequence[Record], class_names: Sequence[str], branches: Sequence[str]) -> None:
    video = _from_video(records)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(_csv_row(Record("", ""), class_names, branches, video)))
        writer.writeheader()
        writer.writerows(_csv_row(record, class_names, branches, video) for record in records)


WRITERS = {".json": _write_json, ".csv": _write_csv}  # by file extension


def write_records(path: Path, records: Sequence[Record], class_names: Sequence[str],
                  branches: Sequence[str] = BRANCHES[:1]) -> None:
    """`records` as JSON (a list of objects) or CSV (a column per branch and class), chosen by
    `path`'s extension (see WRITERS); `branches` are the probability sets written. Records from a
    video add VIDEO_FIELDS (after `message` in CSV)."""
    WRITERS[path.suffix.lower()](path, records, class_names, branches)


def format_table(records: Sequence[Record], class_names: Sequence[str]) -> str:
    """A fixed-width table: file (and for videos frame, time_s, track), face, box, predicted label (or
    status), then the fused probability of each class (columns named by the class's first five letters)."""
    video = _from_video(records)
    header = ["file", *(VIDEO_FIELDS if video else ()), "face", "box (x,y,w,h)", "label",
              *(name[:5] for name in class_names)]
    rows = [header] + [_table_row(record, class_names, video) for record in records]
    widths = [0] * len(header)
    for row in rows:
        for i, cell in enumerate(row[:-1]):  # a row's last cell (an error message) may run on
            widths[i] = max(widths[i], len(cell))
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths)), row[-1]]).rstrip()
                     for row in rows)


def _table_row(record: Record, class_names: Sequence[str], video: bool) -> list[str]:
    box = record.box
    times = [str(record.frame), f"{record.time_s:.3f}", "" if record.track is None else str(record.track)
             ] if video else []
    cells = [record.file, *times, "" if record.face is None else str(record.face),
             f"{box.x},{box.y},{box.width},{box.height}" if box else ""]
    if record.status == OK:
        return [*cells, record.label, *(f"{record.probabilities['fused'][name]:.2f}" for name in class_names)]
    if record.status == NO_FACE:
        return [*cells, NO_FACE]
    return [*cells, "error: " + record.message.removeprefix(f"{record.file}: ")]
