"""What `predict` returns: one result per image, the same type whichever runtime ran the model (a
Keras model, a TFLite, ONNX or SavedModel file).

    result = model.predict("img.jpg")
    result.boxes, result.scores, result.classes, result.names   # detection
    result.mask, result.probabilities                            # segmentation
    result.class_id, result.name, result.score, result.top_k(3)  # classification
    result.plot()       # (h, w, 3) uint8 RGB, drawn by mobilevision.plots as the CLI draws
    result.to_json()    # one entry of the CLI's predictions.json
    result.save(folder) # the picture(s) the CLI's predict writes

Everything is numpy in the original image's pixels; this module imports neither TensorFlow nor
Keras, so a file runs in LiteRT or ONNX Runtime without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Prediction(NamedTuple):
    """One class of a classification: its index, name and probability."""
    class_id: int
    name: str
    score: float


@dataclass
class _Result:
    image: np.ndarray = field(repr=False)  # (h, w, 3) uint8 RGB, as predicted on
    names: list                            # the model's class names, by class index
    file: str | None                       # where the image came from, if a file

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return tuple(self.image.shape[:2])

    def _json(self, **fields) -> dict:
        return {**({"file": self.file} if self.file is not None else {}), **fields}

    def _stem(self) -> str:
        return Path(self.file).stem if self.file else "image"

    def save(self, folder, stem: str | None = None) -> list[Path]:
        """Write `plot()` as `<stem>.jpg` into `folder` (default stem: the file's). -> paths."""
        import cv2

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem or self._stem()}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(self.plot(), cv2.COLOR_RGB2BGR))
        return [path]


@dataclass
class DetectionResult(_Result):
    """Detections of one image, best first.

    boxes: (D, 4) float32 [x0, y0, x1, y1] in the image's pixels, inside the image.
    scores: (D,) float32. classes: (D,) int class indices; `names[classes[i]]` is the name.
    draw_threshold: `plot` draws the detections scoring at least this (`model.head.draw_threshold`).
    """

    boxes: np.ndarray = None
    scores: np.ndarray = None
    classes: np.ndarray = None
    draw_threshold: float = 0.3

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[str]:
        """The class name of each detection."""
        return [self.names[k] for k in self.classes]

    def to_json(self) -> dict:
        """{"file", "detections": [{"class": name, "label": index + 1, "score", "bbox": [x, y,
        w, h] pixels}]} (label counts from 1, as a COCO category list without background)."""
        return self._json(detections=[
            {"class": self.names[k], "label": int(k) + 1, "score": float(s),
             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
            for (x0, y0, x1, y1), s, k in zip(self.boxes, self.scores, self.classes)])

    def plot(self, threshold: float | None = None) -> np.ndarray:
        """The image with the boxes scoring at least `threshold` (default `draw_threshold`)."""
        from mobilevision import plots

        shown = self.scores >= (self.draw_threshold if threshold is None else threshold)
        return plots.draw_detections(self.image, self.boxes[shown], self.classes[shown] + 1,
                                     self.names, self.scores[shown])


@dataclass
class ClassificationResult(_Result):
    """The class probabilities of one image. probabilities: (K,) float32 over `names`."""

    probabilities: np.ndarray = None

    @property
    def class_id(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def name(self) -> str:
        return self.names[self.class_id]

    @property
    def score(self) -> float:
        return float(self.probabilities[self.class_id])

    def top_k(self, k: int = 5) -> list[Prediction]:
        """The k most probable classes, best first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [Prediction(int(i), self.names[i], float(self.probabilities[i])) for i in order]

    def to_json(self) -> dict:
        """{"file", "predictions": [{"class", "class_id", "score"}] of the top 5}."""
        return self._json(predictions=[{"class": p.name, "class_id": p.class_id, "score": p.score}
                                       for p in self.top_k(5)])

    def plot(self) -> np.ndarray:
        """The image with the top class and its probability in the corner."""
        from mobilevision import plots

        return plots.draw_caption(self.image, f"{self.name} {self.score:.2f}", self.class_id + 1)


@dataclass
class SegmentationResult(_Result):
    """A class per pixel of one image.

    probabilities: (h, w, K) float32 over `names` (background first) at the image's size.
    mask: (h, w) uint8 class index of each pixel (the most probable).
    """

    probabilities: np.ndarray = field(default=None, repr=False)
    mask: np.ndarray = field(default=None, repr=False)

    @property
    def fractions(self) -> dict:
        """{class name: share of the image's pixels} of the classes present."""
        counts = np.bincount(self.mask.reshape(-1), minlength=len(self.names))
        return {self.names[i]: round(float(c) / self.mask.size, 6)
                for i, c in enumerate(counts) if c}

    def to_json(self) -> dict:
        """{"file", "size": [h, w], "classes": {name: share of the pixels}}."""
        return self._json(size=list(self.mask.shape), classes=self.fractions)

    def plot(self) -> np.ndarray:
        """The classes blended over the image, with a legend of those present."""
        from mobilevision import plots

        return plots.overlay_mask(self.image, self.mask, self.names)

    def save(self, folder, stem: str | None = None) -> list[Path]:
        """`<stem>_overlay.png` (the plot) and `<stem>_label.png`, a palette PNG whose pixel
        values are the class indices, in the overlay's colours. -> paths."""
        import cv2
        from PIL import Image

        from mobilevision import plots

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = stem or self._stem()
        overlay, label_png = folder / f"{stem}_overlay.png", folder / f"{stem}_label.png"
        cv2.imwrite(str(overlay), cv2.cvtColor(self.plot(), cv2.COLOR_RGB2BGR))
        label = Image.fromarray(self.mask, mode="L")
        label.putpalette(plots.palette().reshape(-1).tolist())
        label.save(label_png)
        return [overlay, label_png]


@dataclass
class UnreadableImage:
    """An input `predict(..., on_error="keep")` could not read: the file and the reason."""

    file: str
    error: str

    def to_json(self) -> dict:
        return {"file": self.file, "error": self.error}


RESULTS = {"detection": DetectionResult, "classification": ClassificationResult,
           "segmentation": SegmentationResult}
