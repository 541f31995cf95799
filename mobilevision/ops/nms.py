"""Per-class non-maximum suppression for detection post-processing.

`multiclass_nms` runs on TensorFlow (`tf.image.combined_non_max_suppression`): post-processing
and export are where TensorFlow is the engine, and that op is one fused, batched kernel that
also exports to TFLite. `multiclass_nms_numpy` is a plain greedy reference that states the
algorithm and checks the TF path in tests.

Classes are reported as `label_offset` + the column of `scores`. With scores = softmax
probabilities without the background column, the default offset 1 gives the training labels
1..K of the readers and `matcher.encode_targets`; padded rows have class 0 (background).
"""

from __future__ import annotations

import numpy as np

from mobilevision.ops.boxes import pairwise_iou


def multiclass_nms(boxes, scores, iou_threshold: float = 0.6, score_threshold: float = 0.01,
                   max_detections: int = 100, max_per_class: int = 100, label_offset: int = 1):
    """Per-class NMS, padded to a fixed size so batches stack (TensorFlow op).

    Args:
      boxes: (A, 4) or (B, A, 4) decoded yxyx boxes, normalized (clip them first if the
        detections should be clipped: `boxes.clip_boxes`).
      scores: (A, K) or (B, A, K) per-class probabilities, background excluded.
      iou_threshold: within a class, a box overlapping a higher-scored kept box by IoU above
        this is suppressed.
      score_threshold: boxes scoring at or below this are dropped first.
      max_detections: detections kept in all (the output size D).
      max_per_class: detections kept per class, before the overall cap.
      label_offset: added to the column index of `scores` to give the class.

    Returns:
      boxes (D, 4) float32, scores (D,) float32 in descending order, classes (D,) int32,
      count () int32 valid rows (the rest are zeros, class 0); each with a leading B when the
      inputs have one.
    """
    import tensorflow as tf

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    unbatched = boxes.shape.rank == 2
    if unbatched:
        boxes, scores = boxes[None], scores[None]
    out_boxes, out_scores, out_classes, count = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],  # q = 1: one box per anchor, shared by every class
        scores,
        max_output_size_per_class=max_per_class,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False)  # keep the caller's boxes as they are; the op would clip to [0, 1]
    valid = tf.range(max_detections)[None, :] < count[:, None]
    out_classes = tf.where(valid, tf.cast(out_classes, tf.int32) + label_offset, 0)
    outputs = (out_boxes, out_scores, out_classes, count)
    return tuple(t[0] for t in outputs) if unbatched else outputs


def nms_numpy(boxes, scores, iou_threshold: float, max_output: int) -> np.ndarray:
    """Greedy NMS of one class: boxes (N, 4), scores (N,) -> indices kept (<= max_output,),
    best first. A box is dropped when its IoU with a kept box exceeds iou_threshold."""
    order = np.argsort(-scores, kind="stable")
    iou = pairwise_iou(boxes, boxes)
    keep = []
    for i in order:
        if len(keep) == max_output:
            break
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return np.asarray(keep, np.int64)


def multiclass_nms_numpy(boxes, scores, iou_threshold: float = 0.6,
                         score_threshold: float = 0.01, max_detections: int = 100,
                         max_per_class: int = 100, label_offset: int = 1):
    """The reference for `multiclass_nms` on one image (numpy in, numpy out, same outputs)."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    found = []  # (score, class column, box)
    for k in range(scores.shape[1]):
        candidates = np.flatnonzero(scores[:, k] > score_threshold)
        kept = nms_numpy(boxes[candidates], scores[candidates, k], iou_threshold, max_per_class)
        found += [(scores[i, k], k, boxes[i]) for i in candidates[kept]]
    found.sort(key=lambda d: -d[0])
    found = found[:max_detections]
    out_boxes = np.zeros((max_detections, 4), np.float32)
    out_scores = np.zeros((max_detections,), np.float32)
    out_classes = np.zeros((max_detections,), np.int32)
    for row, (score, k, box) in enumerate(found):
        out_boxes[row], out_scores[row], out_classes[row] = box, score, k + label_offset
    return out_boxes, out_scores, out_classes, np.int32(len(found))
