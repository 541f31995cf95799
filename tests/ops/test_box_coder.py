"""Faster R-CNN box coder: hand-computed codes and the encode/decode round trip."""

import numpy as np
import tensorflow as tf

from mobilevision.ops.box_coder import decode, encode


def test_encode_hand_computed():
    # Box: centre (0.4, 0.3), size 0.4 x 0.2. Anchor: centre (0.4, 0.4), size 0.2 x 0.4.
    box = np.array([[0.2, 0.2, 0.6, 0.4]], np.float32)
    anchor = np.array([[0.3, 0.2, 0.5, 0.6]], np.float32)
    # ty = 0; tx = (0.3 - 0.4) / 0.4 * 10; th = log(0.4 / 0.2) * 5; tw = log(0.2 / 0.4) * 5.
    expected = [[0.0, -2.5, 5 * np.log(2.0), -5 * np.log(2.0)]]
    np.testing.assert_allclose(encode(box, anchor), expected, atol=1e-5)


def test_encode_matches_the_od_api_test_values():
    # faster_rcnn_box_coder_test.test_get_correct_relative_codes_after_encoding (no scales).
    boxes = np.array([[10.0, 10.0, 20.0, 15.0], [0.2, 0.1, 0.5, 0.4]], np.float32)
    anchors = np.array([[15.0, 12.0, 30.0, 18.0], [0.1, 0.0, 0.7, 0.9]], np.float32)
    expected = [[-0.5, -0.416666, -0.405465, -0.182321],
                [-0.083333, -0.222222, -0.693147, -1.098612]]
    np.testing.assert_allclose(encode(boxes, anchors, (1, 1, 1, 1)), expected, atol=1e-5)


def _random_boxes(rng, n):
    center = rng.uniform(0.1, 0.9, (n, 2))
    size = rng.uniform(0.02, 0.8, (n, 2))
    return np.concatenate([center - size / 2, center + size / 2], 1).astype(np.float32)


def test_round_trip_numpy_and_tensors():
    rng = np.random.default_rng(0)
    boxes, anchors = _random_boxes(rng, 500), _random_boxes(rng, 500)
    codes = encode(boxes, anchors)
    assert isinstance(codes, np.ndarray) and codes.shape == (500, 4)
    np.testing.assert_allclose(decode(codes, anchors), boxes, atol=1e-5)
    tf_codes = encode(tf.constant(boxes), anchors)
    np.testing.assert_allclose(tf_codes.numpy(), codes, atol=1e-4)
    np.testing.assert_allclose(decode(tf_codes, anchors).numpy(), boxes, atol=1e-5)


def test_decode_broadcasts_over_a_batch_and_stays_finite():
    rng = np.random.default_rng(1)
    anchors = _random_boxes(rng, 10)
    codes = np.zeros((3, 10, 4), np.float32)
    np.testing.assert_allclose(decode(codes, anchors), np.broadcast_to(anchors, (3, 10, 4)),
                               atol=1e-6)
    # An untrained head's huge outputs give large but finite boxes.
    assert np.isfinite(decode(np.full((1, 10, 4), 1e4, np.float32), anchors)).all()
    # Empty boxes (e.g. padding) encode to finite codes.
    assert np.isfinite(encode(np.zeros((10, 4), np.float32), anchors)).all()
