"""Box formats, areas and overlaps: hand cases, on numpy and on tensors."""

import numpy as np
import pytest
import tensorflow as tf

from mobilevision.ops import boxes as B


def test_pairwise_iou_hand_cases():
    a = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
    b = np.array([[0, 0, 1, 1],        # identical to a[0], inside a[1] (area 1 of 4)
                  [0, 0.5, 1, 1.5],    # half of a[0]: 0.5 / 1.5; inside a[1]: 1 / 4
                  [3, 3, 4, 4],        # disjoint
                  [0.5, 0.5, 0.5, 0.5]], np.float32)  # empty box
    expected = [[1, 1 / 3, 0, 0],
                [0.25, 1 / 4, 0, 0]]
    iou = B.pairwise_iou(a, b)
    assert isinstance(iou, np.ndarray) and iou.shape == (2, 4)
    np.testing.assert_allclose(iou, expected, atol=1e-6)
    # Two empty boxes overlap by 0, not NaN.
    assert B.pairwise_iou(b[3:], b[3:])[0, 0] == 0


def test_pairwise_iou_on_tensors_matches_numpy():
    rng = np.random.default_rng(0)
    a = np.sort(rng.random((5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]].astype(np.float32)
    b = np.sort(rng.random((3, 2, 2)), axis=1).reshape(3, 4)[:, [0, 2, 1, 3]].astype(np.float32)
    out = B.pairwise_iou(tf.constant(a), b)
    assert tf.is_tensor(out)
    np.testing.assert_allclose(out.numpy(), B.pairwise_iou(a, b), atol=1e-6)


def test_pairwise_ioa_divides_by_the_first_boxes_area():
    small = np.array([[0, 0, 0.5, 0.5]], np.float32)
    large = np.array([[0, 0, 1, 1]], np.float32)
    assert B.pairwise_ioa(small, large)[0, 0] == pytest.approx(1.0)
    assert B.pairwise_ioa(large, small)[0, 0] == pytest.approx(0.25)


def test_area_counts_inverted_boxes_as_empty():
    np.testing.assert_allclose(B.area(np.array([[0, 0, 2, 3], [1, 1, 0, 2]], np.float32)),
                               [6, 0])


def test_coco_xywh_round_trip():
    xywh = np.array([[10, 20, 30, 40]], np.float32)   # x, y, w, h in a 200 x 100 (h x w) image
    yxyx = B.xywh_to_yxyx(xywh, 200, 100)
    np.testing.assert_allclose(yxyx, [[0.1, 0.1, 0.3, 0.4]], atol=1e-7)
    np.testing.assert_allclose(B.yxyx_to_xywh(yxyx, 200, 100), xywh, atol=1e-5)
    # Integer boxes and integer size tensors (as a tf.data map sees them) are fine too.
    out = B.xywh_to_yxyx(tf.constant([[10, 20, 30, 40]]), tf.constant(200), tf.constant(100))
    np.testing.assert_allclose(out.numpy(), [[0.1, 0.1, 0.3, 0.4]], atol=1e-7)


def test_center_round_trip():
    yxyx = np.array([[0.1, 0.2, 0.5, 0.8]], np.float32)
    center = B.yxyx_to_center(yxyx)
    np.testing.assert_allclose(center, [[0.3, 0.5, 0.4, 0.6]], atol=1e-7)
    np.testing.assert_allclose(B.center_to_yxyx(center), yxyx, atol=1e-7)


def test_clip_boxes():
    boxes = np.array([[-0.1, 0.2, 1.3, 0.9], [0.5, -2, 0.6, 2]], np.float32)
    np.testing.assert_allclose(B.clip_boxes(boxes), [[0, 0.2, 1, 0.9], [0.5, 0, 0.6, 1]])
    np.testing.assert_allclose(B.clip_boxes(boxes * 100, 50, 80),
                               [[0, 20, 50, 80], [50, 0, 50, 80]])
