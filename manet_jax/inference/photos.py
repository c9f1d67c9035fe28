"""Images in, one record per face out: load, detect, crop or align, preprocess, predict in batches, visualise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from manet_jax.bundle import FaceTemplate
from manet_jax.inference.alignment import face_crop
from manet_jax.inference.boxes import BoxesFile
from manet_jax.inference.detectors import Detector
from manet_jax.inference.faces import MARGIN, Box
from manet_jax.inference.images import ImageLoadError, LoadedImage, find_images, load_image
from manet_jax.inference.predictor import Predictor
from manet_jax.inference.preprocess import eval_view
from manet_jax.inference.records import BRANCHES, ERROR, NO_FACE, OK, Record
from manet_jax.inference.visualize import save_visualization

_OUTPUT_KEYS = dict(zip(BRANCHES, ("probabilities", "probabilities_local", "probabilities_global")))


class Batcher:
    """Collects preprocessed faces and predicts them `predictor.batch_size` at a time, filling in
    their records (and writing visualisations into `visualize`, when given, which the records name
    in `visualize_as`, default `visualize`). Faces stay pending
    until their forward returns, so a flush cut short by Ctrl-C can be run again."""

    def __init__(self, predictor: Predictor, visualize: Path | None, visualize_as: Path | None = None):
        self.predictor = predictor
        self.visualize = visualize
        self.visualize_as = visualize_as or visualize  # the folder the records name (`predict_paths`)
        self.pending: list[tuple[Record, np.ndarray]] = []
        self.png_names: set[str] = set()

    def add(self, record: Record, view: np.ndarray) -> None:
        self.pending.append((record, view))
        if len(self.pending) == self.predictor.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        records, views = zip(*self.pending)
        out = self.predictor(np.stack(views))
        self.pending = []
        names = self.predictor.spec.class_names
        for i, (record, view) in enumerate(zip(records, views)):
            record.probabilities = {branch: dict(zip(names, out[key][i].tolist()))
                                    for branch, key in _OUTPUT_KEYS.items()}
            record.label = names[int(out["probabilities"][i].argmax())]
            if self.visualize is not None:
                name = self._png_name(Path(record.file).stem, record.face)
                save_visualization(self.visualize / name, view, record.label, record.probabilities,
                                   out["attention"][i], out["cam"][i])
                record.visualization = str(self.visualize_as / name)

    def _png_name(self, stem: str, face: int) -> str:
        name, n = f"{stem}_face{face}.png", 1
        while name in self.png_names:  # same stem in another folder
            n += 1
            name = f"{stem}_face{face}_{n}.png"
        self.png_names.add(name)
        return name


def crop_boxes(pixels: np.ndarray, detect_faces: Detector | None, margin: float) -> list[Box]:
    """The face crops of an (H, W, 3) image: each face `detect_faces` finds, grown by `margin`;
    without a detector, the whole image."""
    height, width = pixels.shape[:2]
    return ([box.expanded(margin, width, height) for box in detect_faces(pixels)] if detect_faces
            else [Box(0, 0, width, height)])


def predict_paths(paths: Sequence[str], predictor: Predictor, *, detect_faces: Detector | None,
                  margin: float = MARGIN, boxes: BoxesFile | None = None, template: FaceTemplate | None = None,
                  visualize: Path | None = None, visualize_as: Path | None = None,
                  stop: Callable[[], None] = lambda: None) -> list[Record]:
    """Records for every face in the images named by `paths` (files, folders, globs), in file order.

    Faces are found by `detect_faces` (`detectors.get_detector`) and cropped with `margin`; without
    a detector, each image is taken as one face crop. With `boxes`, the crops
    are an image's boxes in that file (clipped to the image; no margin). With `template`, faces with
    landmarks are aligned onto it instead (`alignment.face_crop`). Images without faces and
    inputs that fail give a record each (NO_FACE, ERROR). A record's box is the crop fed to the
    model, in original pixels. PNGs go into `visualize`, and records name them in `visualize_as`
    (default: `visualize`), where they will be moved. `stop` is called before each image: what it
    raises (`cli.check_signals`) ends the work.
    """
    if visualize is not None:
        visualize.mkdir(parents=True, exist_ok=True)
    files, missing = find_images(paths)
    records = [Record(path, ERROR, reason) for path, reason in missing]
    batcher = Batcher(predictor, visualize, visualize_as)
    for path in files:
        stop()
        try:
            image = load_image(path)
        except ImageLoadError as e:
            records.append(Record(str(path), ERROR, str(e)))
            continue
        crops = _crops(image, path, detect_faces, boxes, margin)
        if not crops:
            records.append(Record(str(path), NO_FACE))
        for face, (box, original) in enumerate(crops):
            record = Record(str(path), OK, face=face, box=original)
            records.append(record)
            size = predictor.spec.image_size
            batcher.add(record, eval_view(face_crop(image.pixels, box, template, size), size))
    batcher.flush()
    return records


def _crops(image: LoadedImage, path: Path, detect_faces: Detector | None, boxes: BoxesFile | None,
           margin: float) -> list[tuple[Box, Box]]:
    """(box in `image.pixels`, box in original pixels) of each face crop of `image`."""
    if boxes is not None:  # in original pixels, cropped as given (clipped to the image)
        given = (box.expanded(0, *image.size) for box in boxes.boxes_for(path))
        pairs = [(box.scaled(image.scale), box) for box in given]
        return [(box, original) for box, original in pairs if box.width > 0 and box.height > 0]
    return [(box, box.scaled(1 / image.scale)) for box in crop_boxes(image.pixels, detect_faces, margin)]
