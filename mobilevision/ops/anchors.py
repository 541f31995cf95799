"""SSD anchors, as the TF Object Detection API's `ssd_anchor_generator` makes them
(`multiple_grid_anchor_generator.create_ssd_anchors` + `grid_anchor_generator.tile_anchors`).

Anchors are generated from the feature-map sizes alone, so any input size works, and the number
per location is derived from the same specs (`num_anchors_per_location`), so the head and the
anchors cannot disagree.

Order, shared with the head's (N, h, w, n * k) -> (N, h * w * n, k) reshape: layer by layer
(finest map first), within a layer cell by cell row-major (y, then x), within a cell anchor by
anchor in `box_specs` order. So anchor index = layer offset + (y * w + x) * n + j.
"""

from __future__ import annotations

import math

import numpy as np

ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)  # ssdlite_mobilenet_v2_coco.config
LOWEST_LAYER_SCALE = 0.1  # the OD API's fixed small square anchor on the reduced lowest layer


def layer_scales(num_layers: int, min_scale: float = 0.2, max_scale: float = 0.95) -> list[float]:
    """Scales linearly spaced from min_scale (finest layer) to max_scale (coarsest), plus a
    trailing 1.0 that only serves as the "next scale" of the last layer."""
    if num_layers == 1:  # the OD API divides by num_layers - 1; one layer gets min_scale
        return [min_scale, 1.0]
    step = (max_scale - min_scale) / (num_layers - 1)
    return [min_scale + step * i for i in range(num_layers)] + [1.0]


def box_specs(num_layers: int, min_scale: float = 0.2, max_scale: float = 0.95,
              aspect_ratios=ASPECT_RATIOS, interpolated_scale_aspect_ratio: float = 1.0,
              reduce_boxes_in_lowest_layer: bool = True) -> list[list[tuple[float, float]]]:
    """Per layer, the (scale, aspect_ratio) of each anchor at one location, in output order.

    Lowest layer, when reduced: (0.1, 1), (s0, 2), (s0, 1/2). Every other layer: each aspect
    ratio at its scale s_i, then `interpolated_scale_aspect_ratio` at sqrt(s_i * s_{i+1})
    (left out when that ratio is 0)."""
    scales = layer_scales(num_layers, min_scale, max_scale)
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:])):
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(LOWEST_LAYER_SCALE, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, float(ratio)) for ratio in aspect_ratios]
        if interpolated_scale_aspect_ratio > 0.0:
            layer_specs.append((math.sqrt(scale * scale_next), interpolated_scale_aspect_ratio))
        specs.append(layer_specs)
    return specs


def num_anchors_per_location(num_layers: int, aspect_ratios=ASPECT_RATIOS,
                             interpolated_scale_aspect_ratio: float = 1.0,
                             reduce_boxes_in_lowest_layer: bool = True) -> list[int]:
    """Anchors per feature-map cell for each layer: [3, 6, 6, 6, 6, 6] for the recipe's six
    layers. The head sizes its predictors from this; it is never configured."""
    specs = box_specs(num_layers, aspect_ratios=aspect_ratios,
                      interpolated_scale_aspect_ratio=interpolated_scale_aspect_ratio,
                      reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)
    return [len(layer_specs) for layer_specs in specs]


def grid_anchors(height: int, width: int, specs, base_size=(1.0, 1.0)) -> np.ndarray:
    """Anchors of one (height, width) map -> (height * width * len(specs), 4) float64 yxyx
    normalized, centered at ((y + 0.5) / height, (x + 0.5) / width) and not clipped."""
    scales, ratios = np.asarray(specs, np.float64).reshape(-1, 2).T
    anchor_h = scales / np.sqrt(ratios) * base_size[0]
    anchor_w = scales * np.sqrt(ratios) * base_size[1]
    # Broadcast to (height, width, anchors): row-major cells, anchors innermost.
    yc = ((np.arange(height) + 0.5) / height)[:, None, None]
    xc = ((np.arange(width) + 0.5) / width)[None, :, None]
    shape = (height, width, len(scales))
    boxes = [np.broadcast_to(v, shape) for v in
             (yc - anchor_h / 2, xc - anchor_w / 2, yc + anchor_h / 2, xc + anchor_w / 2)]
    return np.stack(boxes, axis=-1).reshape(-1, 4)


def ssd_anchors(feature_sizes, min_scale: float = 0.2, max_scale: float = 0.95,
                aspect_ratios=ASPECT_RATIOS, interpolated_scale_aspect_ratio: float = 1.0,
                reduce_boxes_in_lowest_layer: bool = True, image_size=None) -> np.ndarray:
    """All anchors for maps of `feature_sizes` [(h, w), ...], finest first.

    Returns (A, 4) float32 [ymin, xmin, ymax, xmax] normalized to the image, A = sum over layers
    of h * w * num_anchors_per_location; order as in the module docstring. Anchor height is
    scale / sqrt(ratio) and width scale * sqrt(ratio). Like the reference they are not clipped,
    so large anchors reach past the image.

    image_size: optional (H, W) of the input in pixels. As in the OD API's SSD, the base anchor
    is scaled by min(H, W) / (H, W) so that anchors stay square in pixels on a non-square input.
    None (or a square input) keeps them square in normalized coordinates.
    """
    specs = box_specs(len(feature_sizes), min_scale, max_scale, aspect_ratios,
                      interpolated_scale_aspect_ratio, reduce_boxes_in_lowest_layer)
    base_size = (1.0, 1.0)
    if image_size is not None:
        short = min(image_size)
        base_size = (short / image_size[0], short / image_size[1])
    layers = [grid_anchors(int(h), int(w), layer_specs, base_size)
              for (h, w), layer_specs in zip(feature_sizes, specs)]
    return np.concatenate(layers, axis=0).astype(np.float32)


class SSDAnchorGenerator:
    """The SSD anchor recipe for any number of maps: what a detector head and its task share.

    `num_anchors_per_location(num_maps)` sizes the head's predictors; calling the generator with
    the (h, w) of the maps the head actually built gives the anchors in the head's output order.
    Both come from `box_specs`, so a head and its anchors cannot disagree.
    """

    def __init__(self, min_scale: float = 0.2, max_scale: float = 0.95,
                 aspect_ratios=ASPECT_RATIOS, interpolated_scale_aspect_ratio: float = 1.0,
                 reduce_boxes_in_lowest_layer: bool = True):
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.interpolated_scale_aspect_ratio = float(interpolated_scale_aspect_ratio)
        self.reduce_boxes_in_lowest_layer = bool(reduce_boxes_in_lowest_layer)

    def num_anchors_per_location(self, num_maps: int) -> list[int]:
        return num_anchors_per_location(num_maps, self.aspect_ratios,
                                        self.interpolated_scale_aspect_ratio,
                                        self.reduce_boxes_in_lowest_layer)

    def __call__(self, feature_sizes, image_size=None) -> np.ndarray:
        """feature_sizes [(h, w)] finest first, image_size (H, W) pixels -> (A, 4) float32."""
        return ssd_anchors(feature_sizes, self.min_scale, self.max_scale, self.aspect_ratios,
                           self.interpolated_scale_aspect_ratio, self.reduce_boxes_in_lowest_layer,
                           image_size=image_size)
