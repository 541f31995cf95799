"""Anchor matching and SSD training targets (the input pipeline's target encoding).

The matcher follows the TF Object Detection API's `ArgMaxMatcher` as the SSD recipe configures
it (matched = unmatched threshold 0.5, `force_match_for_each_row`), plus COCO `iscrowd`
handling. Written with `array_module`, so it runs on numpy and, through `keras.ops`, on tf
tensors inside a tf.data map under the TensorFlow backend; it needs nothing keras.ops lacks.
A variable number of boxes (G unknown until run time) is fine, G = 0 included.
"""

from __future__ import annotations

import numpy as np

from mobilevision.ops import box_coder
from mobilevision.ops.boxes import array_module, cast, pairwise_ioa, pairwise_iou

BACKGROUND = -1  # match(): the anchor is a negative
IGNORE = -2      # match(): the anchor is neither positive nor negative (no loss at all)


def match(anchors, gt_boxes, gt_valid=None, gt_ignore=None, iou_threshold: float = 0.5,
          force_match: bool = True):
    """Assign each anchor a ground-truth row, or background, or ignore.

    Args:
      anchors: (A, 4) yxyx normalized.
      gt_boxes: (G, 4) yxyx normalized; G may be 0.
      gt_valid: (G,) bool, False for padding rows, which take no part. None: all valid.
      gt_ignore: (G,) bool, True for `iscrowd` regions. None: no crowd regions.
      iou_threshold: an anchor matches its highest-IoU box when that IoU is >= this.
      force_match: each valid non-crowd box also claims its own highest-IoU anchor, even below
        the threshold, so no object goes untrained (the OD API's bipartite-style force match;
        when two boxes claim one anchor the lower row wins, as there).

    Returns:
      (A,) int32: the matched row of gt_boxes, BACKGROUND (-1) or IGNORE (-2). An anchor that
      matched no object but lies inside a crowd region (intersection over the anchor's area
      >= iou_threshold, the overlap COCO evaluation uses for crowds) is ignored rather than
      taught "background", since the region holds unlabelled objects.
    """
    xp = array_module(anchors, gt_boxes)
    gt_valid, gt_ignore = _masks(gt_boxes, gt_valid, gt_ignore)
    objects = xp.logical_and(gt_valid, xp.logical_not(gt_ignore))
    crowds = xp.logical_and(gt_valid, gt_ignore)

    iou = xp.where(objects, pairwise_iou(anchors, gt_boxes), -1.0)  # (A, G); -1 never matches
    padded = _pad_column(iou, -1.0)  # (A, G + 1), so the reductions are defined when G = 0
    best_gt = cast(xp.argmax(padded, axis=1), "int32")
    matches = xp.where(xp.max(padded, axis=1) >= iou_threshold, best_gt, BACKGROUND)

    if force_match:
        forced, forced_gt = _force_matches(iou, objects)
        matches = xp.where(forced, forced_gt, matches)

    crowd_overlap = xp.where(crowds, pairwise_ioa(anchors, gt_boxes), 0.0)
    in_crowd = xp.max(_pad_column(crowd_overlap, 0.0), axis=1) >= iou_threshold
    return cast(xp.where(xp.logical_and(matches == BACKGROUND, in_crowd), IGNORE, matches),
                "int32")


def _force_matches(iou, objects):
    """iou (A, G), objects (G,) -> (A,) bool: some object's best anchor; (A,) int32: which
    object (the lowest row when several share the anchor)."""
    xp = array_module(iou)
    best_anchor = cast(xp.argmax(iou, axis=0), "int32")  # (G,)
    # A box with no overlap at all (degenerate, or outside the image) has no best anchor.
    claims = xp.logical_and(objects, xp.max(iou, axis=0) > 0)
    anchor_ids = xp.expand_dims(cast(xp.arange(xp.shape(iou)[0]), "int32"), 1)
    claimed = xp.logical_and(anchor_ids == xp.expand_dims(best_anchor, 0), claims)  # (A, G)
    claimed = _pad_column(cast(claimed, "int32"), 0)  # (A, G + 1), so G = 0 works
    return xp.max(claimed, axis=1) > 0, cast(xp.argmax(claimed, axis=1), "int32")


def encode_targets(anchors, gt_boxes, gt_labels, gt_valid=None, gt_ignore=None,
                   scales=box_coder.SCALES, iou_threshold: float = 0.5,
                   force_match: bool = True):
    """SSD training targets for one image.

    Args:
      anchors: (A, 4) yxyx normalized (`anchors.ssd_anchors`).
      gt_boxes: (G, 4) yxyx normalized; gt_labels: (G,) int, contiguous training ids 1..K
        (0 is background, as the readers produce them); gt_valid, gt_ignore: as in `match`.
      scales: the box coder's (sy, sx, sh, sw).

    Returns:
      box_targets: (A, 4) float32 codes (ty, tx, th, tw) of each positive anchor's box; zeros
        for the other anchors (masked out of the loss by class_targets > 0).
      class_targets: (A,) int32: 1..K for positives, 0 for background, -1 to ignore (crowd).
    """
    xp = array_module(anchors, gt_boxes, gt_labels)
    matches = match(anchors, gt_boxes, gt_valid, gt_ignore, iou_threshold, force_match)
    positive = matches >= 0
    # Gather with a padded row as the target of non-positive anchors, so G = 0 gathers safely.
    num_gt = xp.shape(gt_boxes)[0]
    rows = xp.where(positive, matches, num_gt)
    pad_box, pad_label = np.array([[0, 0, 1, 1]], np.float32), np.zeros((1,), np.int32)
    boxes = xp.take(xp.concatenate([cast(gt_boxes, "float32"), pad_box], axis=0), rows, axis=0)
    labels = xp.take(xp.concatenate([cast(gt_labels, "int32"), pad_label], axis=0), rows, axis=0)
    codes = box_coder.encode(boxes, cast(anchors, "float32"), scales)
    box_targets = xp.where(xp.expand_dims(positive, 1), codes, 0.0)
    class_targets = xp.where(positive, labels, xp.where(matches == IGNORE, -1, 0))
    return cast(box_targets, "float32"), cast(class_targets, "int32")


def _masks(gt_boxes, gt_valid, gt_ignore):
    # The optional (G,) masks, defaulting to "all valid" and "none ignored".
    xp = array_module(gt_boxes)
    if gt_valid is None:
        gt_valid = xp.ones_like(gt_boxes[:, 0], dtype="bool")
    if gt_ignore is None:
        gt_ignore = xp.zeros_like(gt_boxes[:, 0], dtype="bool")
    return cast(gt_valid, "bool"), cast(gt_ignore, "bool")


def _pad_column(x, value):
    # (A, G) -> (A, G + 1) with `value` last, so reductions over G are defined when G = 0.
    xp = array_module(x)
    # An (A, 1) column made by summing over G: x[:, :1] would be (A, 0) when G = 0.
    column = xp.zeros_like(xp.sum(x, axis=1, keepdims=True)) + value
    return xp.concatenate([x, column], axis=1)

