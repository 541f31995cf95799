"""From images to results: each task's preprocessing, and the step from the decoded outputs (what
the Keras model's `predict` and every exported file return; `TASK_OUTPUTS` in
`export/formats.py`) to the results of `mobilevision.results`. numpy and OpenCV only, so an
exported file runs without TensorFlow.

Each `predict_<task>(run, images, files, **settings)` takes
  run: batch (N, H, W, 3) float32 pixels 0..255 -> {output name: (N, ...) numpy}, the model in
    whichever runtime (segmentation: `run_at(size)` -> such a function for an input size);
  images: list of (h, w, 3) uint8 RGB arrays, any sizes; files: their paths, or None each;
and returns one result per image. `settings_from_config` gives the settings a config implies.
"""

from __future__ import annotations

import math

import numpy as np

from mobilevision.ops.resize import central_crop, resize_bilinear
from mobilevision.results import ClassificationResult, DetectionResult, SegmentationResult

# The pixel value the backbone's preprocessing maps to 0 (the middle of its [-1, 1] range): what
# segmentation pads with, in training and at inference.
PAD_VALUE = 127.5


def prepare_detection(image, input_size, **_) -> np.ndarray:
    """The whole image stretched to the input size (bilinear), as in training."""
    return resize_bilinear(image, input_size)


def prepare_classification(image, input_size, crop=0.875, **_) -> np.ndarray:
    """The central `crop` of each side kept, resized to the input (antialiased bilinear), as
    `augment.central_crop_resize` at evaluation during training."""
    return resize_bilinear(central_crop(image, crop), input_size, antialias=True)


def fitted_size(image_hw, input_size, scale: float = 1.0) -> tuple[int, int]:
    """Segmentation: the size an (h, w) image is resized to so it fits scale x `input_size`
    with its aspect kept."""
    h, w = image_hw
    canvas = canvas_size(input_size, scale)
    f = min(scale * input_size[0] / h, scale * input_size[1] / w)
    return min(max(1, round(h * f)), canvas[0]), min(max(1, round(w * f)), canvas[1])


def prepare_segmentation(image, input_size, scale: float = 1.0, **_) -> np.ndarray:
    """The image resized to fit scale x the input size (aspect kept) and padded at the bottom
    and right with PAD_VALUE up to `canvas_size`."""
    canvas = np.full((*canvas_size(input_size, scale), 3), PAD_VALUE, np.float32)
    nh, nw = fitted_size(image.shape[:2], input_size, scale)
    canvas[:nh, :nw] = resize_bilinear(image, (nh, nw))
    return canvas


PREPARE = {"detection": prepare_detection, "classification": prepare_classification,
           "segmentation": prepare_segmentation}


def predict_detection(run, images, files, *, input_size, names, draw_threshold=0.3):
    """Boxes back in each image's pixels."""
    out = run(np.stack([prepare_detection(im, input_size) for im in images]))
    results = []
    for i, (image, file) in enumerate(zip(images, files)):
        n = int(out["count"][i])
        h, w = image.shape[:2]
        boxes = np.asarray(out["boxes"][i, :n], np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
        results.append(DetectionResult(
            image, names, file, boxes=boxes * np.array([w, h, w, h], np.float32),
            scores=np.asarray(out["scores"][i, :n], np.float32),
            classes=np.asarray(out["classes"][i, :n]).astype(np.int64),
            draw_threshold=draw_threshold))
    return results


def predict_classification(run, images, files, *, input_size, names, crop=0.875):
    probs = run(np.stack([prepare_classification(im, input_size, crop) for im in images]))[
        "probabilities"]
    return [ClassificationResult(image, names, file, probabilities=np.asarray(p, np.float32))
            for image, file, p in zip(images, files, probs)]


def canvas_size(input_size, scale: float, multiple: int = 32) -> tuple[int, int]:
    """The input size segmentation runs at for `scale`: scale x `input_size`, rounded up to a
    multiple of 32 (the network's largest stride)."""
    return tuple(max(multiple, math.ceil(scale * s / multiple - 1e-9) * multiple)
                 for s in input_size)


def predict_segmentation(run_at, images, files, *, input_size, names, scales=(1.0,),
                         flip=False):
    """At each scale s an image is prepared (`prepare_segmentation`), run, and its
    probabilities cropped and resized (bilinear) back to h x w; the probabilities are averaged
    over the scales and, with `flip`, the mirrored inputs (the paper's MF)."""
    import cv2

    total = [np.zeros((*im.shape[:2], len(names)), np.float32) for im in images]
    for s in scales:
        run = run_at(canvas_size(input_size, s))
        batch = np.stack([prepare_segmentation(im, input_size, s) for im in images])
        fitted = [fitted_size(im.shape[:2], input_size, s) for im in images]
        for mirrored in ((False, True) if flip else (False,)):
            x = np.ascontiguousarray(batch[:, :, ::-1]) if mirrored else batch
            scores = run(x)["scores"]
            if mirrored:
                scores = scores[:, :, ::-1]
            for i, (image, (nh, nw)) in enumerate(zip(images, fitted)):
                h, w = image.shape[:2]
                p = np.ascontiguousarray(scores[i, :nh, :nw], np.float32)
                if (nh, nw) != (h, w):
                    p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
                total[i] += p
    passes = len(scales) * (2 if flip else 1)
    results = []
    for image, file, p in zip(images, files, total):
        p /= passes
        results.append(SegmentationResult(image, names, file, probabilities=p,
                                          mask=p.argmax(-1).astype(np.uint8)))
    return results


PREDICT = {"detection": predict_detection, "classification": predict_classification,
           "segmentation": predict_segmentation}


def settings_from_config(task: str, cfg) -> dict:
    """The predict settings `cfg` implies for `task`: detection's draw threshold, the
    classifier's evaluation crop, segmentation's test scales and flip."""
    if cfg is None:
        return {}
    if task == "detection":
        return {"draw_threshold": cfg["model"]["head"]["draw_threshold"]}
    if task == "classification":
        return {"crop": cfg["data"]["eval_crop"]}
    return {"scales": tuple(cfg["eval"]["scales"]), "flip": bool(cfg["eval"]["flip"])}
