"""Face boxes given by the user (`predict --boxes FILE`): a JSON list of {file, x, y, width, height}
objects (each optionally with `landmarks`, the face's five (x, y) in `bundle.LANDMARKS`' order, to
align it by) or a CSV file with those columns, a row per face."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from manet_jax.errors import ManetError
from manet_jax.inference.faces import Box

FIELDS = ("file", "x", "y", "width", "height")


class BoxesFileError(ManetError):
    """A --boxes file that cannot be read; the message names the file and the line."""


class BoxesFile:
    """The boxes of a --boxes file by image; `boxes_for` matches an input image to them."""

    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise BoxesFileError(f"--boxes {path}: cannot be read ({e})") from None
        entries = _json_entries(path, text) if path.suffix.lower() == ".json" else _csv_entries(path, text)
        # by each file's resolved path and by its name, resolved once rather than for every image
        self._by_path: dict[str, list[Box]] = defaultdict(list)
        self._by_name: dict[str, list[Box]] = defaultdict(list)
        self.has_landmarks = False  # whether any face comes with landmarks
        for line, entry in entries:
            file, box = _parse_entry(path, line, entry)
            self.has_landmarks |= box.landmarks is not None
            self._by_path[os.path.realpath(file)].append(box)
            self._by_name[Path(file).name].append(box)

    def boxes_for(self, image: Path) -> list[Box]:
        """The boxes whose file is `image`'s path (resolved) or, if none is, its name."""
        return list(self._by_path.get(os.path.realpath(image)) or self._by_name.get(image.name, []))


def _json_entries(path: Path, text: str) -> list[tuple[int, object]]:
    """(line, value) for each element of the JSON list in `text`."""
    decoder, entries = json.JSONDecoder(), []
    try:
        json.loads(text)  # reports syntax errors with their line
        index = _skip_space(text, 0)
        if text[index:index + 1] != "[":
            raise BoxesFileError(f"--boxes {path}: line {text.count(chr(10), 0, index) + 1}: expected a JSON list "
                                 "of {file, x, y, width, height} objects")
        index = _skip_space(text, index + 1)
        while text[index] != "]":
            value, end = decoder.raw_decode(text, index)
            entries.append((text.count("\n", 0, index) + 1, value))
            index = _skip_space(text, end)
            index = _skip_space(text, index + 1) if text[index] == "," else index
    except json.JSONDecodeError as e:
        raise BoxesFileError(f"--boxes {path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    return entries


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _csv_entries(path: Path, text: str) -> list[tuple[int, object]]:
    """(line, row) for each data row of the CSV in `text`."""
    reader = csv.DictReader(text.splitlines())
    missing = [field for field in FIELDS if field not in (reader.fieldnames or [])]
    if missing:
        raise BoxesFileError(f"--boxes {path}: line 1: the header lacks the column(s) {', '.join(missing)} "
                             f"(needs {','.join(FIELDS)})")
    return [(reader.line_num, row) for row in reader]


def _parse_entry(path: Path, line: int, entry: object) -> tuple[str, Box]:
    where = f"--boxes {path}: line {line}"
    if not isinstance(entry, dict) or any(entry.get(field) in (None, "") for field in FIELDS):
        raise BoxesFileError(f"{where}: each face needs {', '.join(FIELDS)}; got {entry!r}")
    if not isinstance(entry["file"], str):
        raise BoxesFileError(f"{where}: file must be a path; got {entry['file']!r}")
    try:
        values = [float(entry[field]) for field in FIELDS[1:]]
    except (TypeError, ValueError):
        values = []
    if len(values) < 4 or not all(map(math.isfinite, values)) or any(isinstance(entry[f], bool) for f in FIELDS[1:]):
        raise BoxesFileError(f"{where}: x, y, width and height must be numbers; got "
                             f"{', '.join(repr(entry[field]) for field in FIELDS[1:])}")
    box = Box(*(round(v) for v in values), _landmarks(where, entry.get("landmarks")))
    if box.x < 0 or box.y < 0 or box.width < 1 or box.height < 1:
        raise BoxesFileError(f"{where}: {box.x},{box.y},{box.width},{box.height}: x and y must be at least 0, "
                             "width and height at least 1")
    return entry["file"], box


def _landmarks(where: str, value: object) -> tuple[tuple[float, float], ...] | None:
    """A JSON entry's `landmarks` (None where it has none)."""
    from manet_jax.bundle import LANDMARKS  # here: predict reads its options before its handlers, without JAX

    if value is None:
        return None
    try:
        pairs = tuple((float(x), float(y)) for x, y in value)
    except (TypeError, ValueError):
        pairs = ()
    if len(pairs) != len(LANDMARKS) or not all(math.isfinite(v) for pair in pairs for v in pair):
        raise BoxesFileError(f"{where}: landmarks must be {len(LANDMARKS)} [x, y] pairs ({', '.join(LANDMARKS)}); "
                             f"got {value!r}")
    return pairs
