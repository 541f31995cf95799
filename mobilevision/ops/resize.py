"""Image resizing in numpy, equal to `tf.image.resize(..., "bilinear")` within 0.01 of 0..255.

`predict` prepares every image with these (a Keras model and every exported file alike), and
evaluation goes through `predict`, so a result never depends on which runtime ran the model and
loading a .tflite or .onnx file needs no TensorFlow.

- `antialias=False` (detection, segmentation): plain bilinear interpolation with half-pixel
  centres, the edge pixel repeated past the border: OpenCV's INTER_LINEAR on float32 computes
  exactly that (TF's `ResizeBilinear` with half_pixel_centers=True).
- `antialias=True` (classification, as `central_crop_resize` in training): TensorFlow's
  `ScaleAndTranslate` with the triangle kernel, whose support widens by the downscaling factor so
  every input pixel contributes (a low-pass filter before sampling); upscaling is plain bilinear.
  Written as two small weight matrices, one per axis.
"""

from __future__ import annotations

import numpy as np


def resize_bilinear(image, size, antialias: bool = False) -> np.ndarray:
    """image (h, w, C) any numeric dtype -> (H, W, C) float32, size = (H, W)."""
    image = np.asarray(image, np.float32)
    out_h, out_w = int(size[0]), int(size[1])
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image.copy()
    if not antialias or (out_h >= h and out_w >= w):
        import cv2

        out = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(out_h, out_w, *image.shape[2:])  # cv2 drops a channel axis of 1
    wy, wx = _triangle_weights(h, out_h), _triangle_weights(w, out_w)
    # (H, h) @ (h, w * C) -> (H, w, C), then each row (w, C) by (W, w) -> (H, W, C).
    rows = (wy @ image.reshape(h, -1)).reshape(out_h, w, -1)
    return np.einsum("Ww,Hwc->HWc", wx, rows, optimize=True).reshape(
        out_h, out_w, *image.shape[2:]).astype(np.float32, copy=False)


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of TensorFlow's antialiased bilinear resampling along one
    axis (`scale_and_translate`, triangle kernel, no translation)."""
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0)
    sample = (np.arange(out_size, dtype=np.float64) + 0.5) * inv_scale - 0.5
    x = np.abs(sample[:, None] - np.arange(in_size, dtype=np.float64)[None, :]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - x)
    total = weights.sum(1, keepdims=True)
    weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
                       weights / np.where(total != 0, total, 1), 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return np.where(inside[:, None], weights, 0.0).astype(np.float32)


def central_crop(image, fraction: float) -> np.ndarray:
    """The central `fraction` of each side of (h, w, C), as `tf.image.central_crop` takes it."""
    if fraction >= 1.0:
        return image
    h, w = image.shape[:2]
    # tf.image.central_crop: start = int((size - size * fraction) / 2), size - 2 * start kept.
    top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
    return image[top:h - top, left:w - left]
