"""Per-class NMS: hand cases and the TF op against the numpy reference."""

import numpy as np
import tensorflow as tf

from mobilevision.ops.nms import multiclass_nms, multiclass_nms_numpy

A = [0.0, 0.0, 0.5, 0.5]
A_SHIFTED = [0.0, 0.05, 0.5, 0.55]   # IoU 0.82 with A
FAR = [0.6, 0.6, 0.9, 0.9]


def _run(boxes, scores, **kw):
    out = [np.asarray(t) for t in multiclass_nms(np.float32(boxes), np.float32(scores), **kw)]
    ref = multiclass_nms_numpy(boxes, scores, **kw)
    for got, want in zip(out, ref):
        np.testing.assert_allclose(got, want, atol=1e-6)
    return out


def test_overlapping_same_class_keeps_the_best():
    boxes, scores, classes, count = _run([A, A_SHIFTED], [[0.9, 0.0], [0.8, 0.0]],
                                         max_detections=4)
    assert count == 1 and classes.tolist() == [1, 0, 0, 0]   # column 0 -> label 1
    np.testing.assert_allclose(boxes[0], A)
    np.testing.assert_allclose(scores, [0.9, 0, 0, 0])


def test_overlapping_different_classes_are_both_kept():
    _, scores, classes, count = _run([A, A_SHIFTED], [[0.9, 0.0], [0.0, 0.8]], max_detections=4)
    assert count == 2 and classes.tolist() == [1, 2, 0, 0]
    np.testing.assert_allclose(scores[:2], [0.9, 0.8])


def test_thresholds_and_caps():
    boxes = [A, FAR, [0.2, 0.7, 0.3, 0.8]]
    scores = [[0.9], [0.5], [0.005]]                        # the last is under score_threshold
    assert _run(boxes, scores, max_detections=5)[3] == 2
    _, kept, _, count = _run(boxes, scores, max_detections=1)  # max_detections cap
    assert count == 1 and kept.tolist() == [np.float32(0.9)]
    assert _run(boxes, scores, max_detections=5, max_per_class=1)[3] == 1
    # With a lower IoU threshold the shifted box is suppressed; at 0.9 it survives.
    assert _run([A, A_SHIFTED], [[0.9], [0.8]], iou_threshold=0.9)[3] == 2


def test_against_reference_random_and_batched():
    rng = np.random.default_rng(0)
    center = rng.uniform(0.2, 0.8, (2, 300, 2))   # crowded, so suppression really happens
    size = rng.uniform(0.05, 0.3, (2, 300, 2))
    boxes = np.concatenate([center - size / 2, center + size / 2], -1).astype(np.float32)
    scores = rng.random((2, 300, 6)).astype(np.float32) ** 3
    out = [t.numpy() for t in multiclass_nms(boxes, scores, max_detections=50, max_per_class=20)]
    assert out[0].shape == (2, 50, 4) and out[2].dtype == np.int32
    for b in range(2):
        ref = multiclass_nms_numpy(boxes[b], scores[b], max_detections=50, max_per_class=20)
        for got, want in zip(out, ref):
            np.testing.assert_allclose(got[b], want, atol=1e-6)


def test_no_detections():
    boxes, scores, classes, count = multiclass_nms(tf.zeros((10, 4)), tf.zeros((10, 3)))
    assert int(count) == 0 and boxes.shape == (100, 4) and not np.asarray(classes).any()
