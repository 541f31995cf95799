"""Anchor matching and target encoding on hand-made cases, numpy and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from mobilevision.ops.matcher import encode_targets, match

# Four quadrants of the image, then the whole image.
ANCHORS = np.array([[0, 0, 0.5, 0.5], [0, 0.5, 0.5, 1], [0.5, 0, 1, 0.5], [0.5, 0.5, 1, 1],
                    [0, 0, 1, 1]], np.float32)


def _match(gt, valid=None, ignore=None, **kw):
    gt = np.asarray(gt, np.float32).reshape(-1, 4)
    as_bool = (lambda m: None if m is None else np.asarray(m, bool))
    out = match(ANCHORS, gt, as_bool(valid), as_bool(ignore), **kw)
    assert out.dtype == np.int32 and out.shape == (5,)
    return out.tolist()


def test_threshold():
    assert _match([[0, 0, 0.4, 0.5]]) == [0, -1, -1, -1, -1]        # IoU 0.8 with quadrant 0
    assert _match([[0, 0, 0.5, 0.25]], force_match=False) == [0, -1, -1, -1, -1]  # IoU 0.5: >=
    # The whole-image box matches the whole-image anchor and no quadrant (IoU 0.25).
    assert _match([[0, 0, 1, 1]]) == [-1, -1, -1, -1, 0]


def test_force_match_below_threshold():
    small = [[0, 0, 0.3, 0.3]]                  # IoU 0.36 with quadrant 0, 0.09 with the whole
    assert _match(small, force_match=False) == [-1] * 5
    assert _match(small) == [0, -1, -1, -1, -1]


def test_force_match_conflict_goes_to_the_lower_row():
    # Both boxes' best anchor is quadrant 0; as in the OD API the lower row wins it, even over
    # the threshold match of row 1 (IoU 1).
    assert _match([[0, 0, 0.3, 0.3], [0, 0, 0.5, 0.5]]) == [0, -1, -1, -1, -1]
    assert _match([[0, 0, 0.3, 0.3], [0, 0, 0.5, 0.5]], force_match=False) == [1, -1, -1, -1, -1]


def test_crowd_regions_are_ignored_not_negative():
    # Object in quadrant 0, crowd over the whole image: every other anchor lies inside the
    # crowd (intersection over anchor area 1, though IoU is only 0.25) and is ignored.
    gt = [[0, 0, 0.5, 0.5], [0, 0, 1, 1]]
    assert _match(gt, ignore=[False, True]) == [0, -2, -2, -2, -2]
    # A crowd over the top half: the bottom quadrants stay negatives, the whole-image anchor is
    # half inside (0.5 >= 0.5) and ignored.
    assert _match([[0, 0, 0.5, 1]], ignore=[True]) == [-2, -2, -1, -1, -2]
    # A crowd never claims an anchor by force match.
    assert _match([[0, 0, 0.1, 0.1]], ignore=[True]) == [-1] * 5


def test_no_ground_truth_and_padding():
    assert _match(np.zeros((0, 4))) == [-1] * 5
    # A padded row that would match quadrant 3 if it were real takes no part.
    assert _match([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], valid=[True, False]) == [0, -1, -1, -1, -1]
    assert _match([[0.5, 0.5, 1, 1]], valid=[False]) == [-1] * 5
    # All-zero padding rows (no overlap with anything) are not force-matched either.
    assert _match(np.zeros((3, 4))) == [-1] * 5


def test_encode_targets_hand_case():
    gt = np.array([[0, 0, 0.4, 0.5], [0.5, 0, 1, 1]], np.float32)
    labels = np.array([3, 7], np.int32)
    box_t, cls_t = encode_targets(ANCHORS, gt, labels, np.array([True, True]),
                                  np.array([False, True]))
    assert cls_t.dtype == np.int32 and box_t.dtype == np.float32
    assert cls_t.tolist() == [3, 0, -1, -1, -1]
    # Quadrant 0 (centre 0.25, 0.25, size 0.5) codes the box (centre 0.2, 0.25, size 0.4 x 0.5):
    # ty = -0.05 / 0.5 * 10, tx = 0, th = 5 log 0.8, tw = 0.
    np.testing.assert_allclose(box_t[0], [-1.0, 0.0, 5 * np.log(0.8), 0.0], atol=1e-5)
    np.testing.assert_array_equal(box_t[1:], 0)


def test_encode_targets_without_boxes():
    box_t, cls_t = encode_targets(ANCHORS, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    assert cls_t.tolist() == [0] * 5 and box_t.shape == (5, 4) and not box_t.any()


def _random_case(rng, num_gt):
    center = rng.uniform(0, 1, (num_gt, 2))
    size = rng.uniform(0.05, 0.6, (num_gt, 2))
    boxes = np.concatenate([center - size / 2, center + size / 2], 1).astype(np.float32)
    return (boxes, rng.integers(1, 5, num_gt).astype(np.int32), rng.random(num_gt) > 0.2,
            rng.random(num_gt) > 0.8)


@pytest.fixture(scope="module")
def grid_anchors():
    from mobilevision.ops.anchors import ssd_anchors
    return ssd_anchors([(4, 4), (2, 2), (1, 1)])


def test_tf_data_map_matches_numpy(grid_anchors):
    # Variable box counts (0 included) inside a graph-mode tf.data map give the numpy results.
    rng = np.random.default_rng(0)
    cases = [_random_case(rng, n) for n in (0, 1, 3, 7)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(cases),
        output_signature=(tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.int32),
                          tf.TensorSpec((None,), tf.bool), tf.TensorSpec((None,), tf.bool)))
    ds = ds.map(lambda b, l, v, i: encode_targets(grid_anchors, b, l, v, i))
    for case, (box_t, cls_t) in zip(cases, ds):
        np_box, np_cls = encode_targets(grid_anchors, *case)
        np.testing.assert_array_equal(cls_t.numpy(), np_cls)
        np.testing.assert_allclose(box_t.numpy(), np_box, atol=1e-4)
        # Positives only ever take labels of valid, non-crowd boxes.
        boxes, labels, valid, crowd = case
        assert set(np_cls[np_cls > 0]) <= set(labels[valid & ~crowd])
