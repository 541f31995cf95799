"""Box formats, areas and overlaps.

Our internal convention is [ymin, xmin, ymax, xmax] ("yxyx"), normalized to the image size, so a
box survives resizing unchanged. COCO files use [x, y, width, height] in pixels ("xywh"); the box
coder works in center form [ycenter, xcenter, height, width] ("center").

Every function here has one implementation that runs on numpy or on backend tensors, chosen by
its inputs (`array_module`): numpy in, numpy out (readers, evaluation, tests); tensors in,
`keras.ops` (the model, and tf.data maps under the TensorFlow backend, where TensorFlow runs
them as graph ops).
"""

from __future__ import annotations

import numbers

import keras
import numpy as np

# Guards the IoU division for degenerate (zero-area) pairs; far below any real box area, even
# normalized ones (a 1-pixel box in a 4000-pixel image has area 6e-8).
_EPSILON = 1e-12


def array_module(*arrays):
    """`numpy` when every input is numpy (or a Python number or list), else `keras.ops`.

    numpy and keras.ops share the names used in this package (stack, where, maximum, argmax,
    take, ...), so one body serves both and numpy callers pay no framework overhead."""
    numpy_like = (np.ndarray, np.generic, numbers.Number, list, tuple)
    return np if all(isinstance(a, numpy_like) for a in arrays) else keras.ops


def cast(x, dtype):
    """`x` as `dtype` ("float32", "int32", ...), staying numpy or tensor as it came."""
    if array_module(x) is np:
        return np.asarray(x, dtype)
    return keras.ops.cast(x, dtype)


def _dtype(x) -> str:
    # The float type to compute in: the boxes' own, or float32 for integer / list input.
    dtype = keras.backend.standardize_dtype(getattr(x, "dtype", "float32"))
    return dtype if "float" in dtype else "float32"


def area(boxes):
    """boxes (..., 4) yxyx -> (...,) area; inverted boxes count as empty, not negative."""
    xp = array_module(boxes)
    height = xp.maximum(boxes[..., 2] - boxes[..., 0], 0)
    width = xp.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return height * width


def pairwise_intersection(boxes1, boxes2):
    """boxes1 (N, 4), boxes2 (M, 4) yxyx -> (N, M) intersection areas."""
    xp = array_module(boxes1, boxes2)
    a = xp.expand_dims(boxes1, 1)  # (N, 1, 4) against (M, 4): broadcast to (N, M)
    ymin = xp.maximum(a[..., 0], boxes2[..., 0])
    xmin = xp.maximum(a[..., 1], boxes2[..., 1])
    ymax = xp.minimum(a[..., 2], boxes2[..., 2])
    xmax = xp.minimum(a[..., 3], boxes2[..., 3])
    return xp.maximum(ymax - ymin, 0) * xp.maximum(xmax - xmin, 0)


def pairwise_iou(boxes1, boxes2):
    """boxes1 (N, 4), boxes2 (M, 4) yxyx -> (N, M) intersection over union; 0 where both
    boxes are empty."""
    xp = array_module(boxes1, boxes2)
    inter = pairwise_intersection(boxes1, boxes2)
    union = xp.expand_dims(area(boxes1), 1) + area(boxes2) - inter
    return inter / xp.maximum(union, _EPSILON)


def pairwise_ioa(boxes1, boxes2):
    """boxes1 (N, 4), boxes2 (M, 4) yxyx -> (N, M) intersection over the area of boxes1.

    COCO evaluation scores a detection against an `iscrowd` region this way (a detection inside
    the region overlaps it fully however large the region is), so the matcher does too."""
    xp = array_module(boxes1, boxes2)
    inter = pairwise_intersection(boxes1, boxes2)
    return inter / xp.maximum(xp.expand_dims(area(boxes1), 1), _EPSILON)


def clip_boxes(boxes, height=1.0, width=1.0):
    """boxes (..., 4) yxyx -> the same clipped to the window [0, height] x [0, width]
    (the unit square by default, for normalized boxes)."""
    xp = array_module(boxes)
    dtype = _dtype(boxes)
    height, width = cast(height, dtype), cast(width, dtype)
    ymin = xp.clip(boxes[..., 0], 0, height)
    xmin = xp.clip(boxes[..., 1], 0, width)
    ymax = xp.clip(boxes[..., 2], 0, height)
    xmax = xp.clip(boxes[..., 3], 0, width)
    return xp.stack([ymin, xmin, ymax, xmax], axis=-1)


def xywh_to_yxyx(boxes, height, width):
    """COCO boxes (..., 4) [x, y, w, h] in pixels of an image `height` x `width`
    -> (..., 4) [ymin, xmin, ymax, xmax] normalized. Not clipped."""
    xp = array_module(boxes)
    dtype = _dtype(boxes)
    boxes = cast(boxes, dtype)
    height, width = cast(height, dtype), cast(width, dtype)
    x, y, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return xp.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=-1)


def yxyx_to_xywh(boxes, height, width):
    """(..., 4) [ymin, xmin, ymax, xmax] normalized -> COCO (..., 4) [x, y, w, h] in pixels of
    an image `height` x `width` (what COCO results files and pycocotools expect)."""
    xp = array_module(boxes)
    dtype = _dtype(boxes)
    boxes = cast(boxes, dtype)
    height, width = cast(height, dtype), cast(width, dtype)
    ymin, xmin = boxes[..., 0] * height, boxes[..., 1] * width
    ymax, xmax = boxes[..., 2] * height, boxes[..., 3] * width
    return xp.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)


def yxyx_to_center(boxes):
    """(..., 4) [ymin, xmin, ymax, xmax] -> (..., 4) [ycenter, xcenter, height, width]."""
    xp = array_module(boxes)
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    ycenter = boxes[..., 0] + 0.5 * height
    xcenter = boxes[..., 1] + 0.5 * width
    return xp.stack([ycenter, xcenter, height, width], axis=-1)


def center_to_yxyx(boxes):
    """(..., 4) [ycenter, xcenter, height, width] -> (..., 4) [ymin, xmin, ymax, xmax]."""
    xp = array_module(boxes)
    half_h, half_w = 0.5 * boxes[..., 2], 0.5 * boxes[..., 3]
    return xp.stack([boxes[..., 0] - half_h, boxes[..., 1] - half_w,
                     boxes[..., 0] + half_h, boxes[..., 1] + half_w], axis=-1)
