"""The Faster R-CNN box coder, as the TF Object Detection API's `faster_rcnn_box_coder`.

A box is coded relative to its anchor, both in center form:

    ty = (y - ya) / ha * sy        th = log(h / ha) * sh
    tx = (x - xa) / wa * sx        tw = log(w / wa) * sw

with scales (sy, sx, sh, sw) = (10, 10, 5, 5) in the SSD recipe, which brings the codes of
matched boxes to roughly unit variance for the smooth-L1 loss. Boxes and anchors are
[ymin, xmin, ymax, xmax]; numpy in gives numpy out, tensors use `keras.ops` (see `boxes`).
"""

from __future__ import annotations

import math

from mobilevision.ops.boxes import array_module, center_to_yxyx, yxyx_to_center

SCALES = (10.0, 10.0, 5.0, 5.0)
# Added to every height and width before dividing and taking logs, as the OD API does, so an
# empty box (e.g. a padded row) codes to finite numbers instead of NaN / -inf.
EPSILON = 1e-8
# Decoding clamps th and tw (after unscaling) here, so an untrained head's large outputs cannot
# overflow exp() into inf / NaN boxes; log(1000 / 16) is torchvision's bound. It only bites for
# boxes over 62x their anchor, which no real target is; the OD API has no clamp.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(boxes, anchors, scales=SCALES):
    """boxes (..., A, 4), anchors (A, 4) yxyx -> (..., A, 4) codes (ty, tx, th, tw)."""
    xp = array_module(boxes, anchors)
    y, x, h, w = _unpack(yxyx_to_center(boxes))
    ya, xa, ha, wa = _unpack(yxyx_to_center(anchors))
    h, w, ha, wa = h + EPSILON, w + EPSILON, ha + EPSILON, wa + EPSILON
    ty = (y - ya) / ha * scales[0]
    tx = (x - xa) / wa * scales[1]
    th = xp.log(h / ha) * scales[2]
    tw = xp.log(w / wa) * scales[3]
    return xp.stack([ty, tx, th, tw], axis=-1)


def decode(rel_codes, anchors, scales=SCALES):
    """rel_codes (..., A, 4) (ty, tx, th, tw), anchors (A, 4) yxyx -> (..., A, 4) boxes yxyx,
    in the anchors' units (normalized for SSD anchors) and not clipped."""
    xp = array_module(rel_codes, anchors)
    ty, tx, th, tw = _unpack(rel_codes)
    ya, xa, ha, wa = _unpack(yxyx_to_center(anchors))
    th = xp.minimum(th / scales[2], MAX_LOG_SCALE)
    tw = xp.minimum(tw / scales[3], MAX_LOG_SCALE)
    y = ty / scales[0] * ha + ya
    x = tx / scales[1] * wa + xa
    h = xp.exp(th) * ha
    w = xp.exp(tw) * wa
    return center_to_yxyx(xp.stack([y, x, h, w], axis=-1))


def _unpack(boxes):
    # Components of the last axis, as four (...,) arrays.
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
