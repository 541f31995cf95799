"""SSD anchors: golden values on a small layout, order, counts, non-square input."""

import math

import numpy as np
import pytest

from mobilevision.ops.anchors import box_specs, num_anchors_per_location, ssd_anchors


def _box(yc, xc, scale, ratio):
    # The generator's formula, spelled out: h = scale / sqrt(ratio), w = scale * sqrt(ratio).
    h, w = scale / math.sqrt(ratio), scale * math.sqrt(ratio)
    return [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]


def test_golden_values_two_layers():
    # Two layers: scales 0.2 (2x2 map) and 0.95 (1x1 map), next scale 1.0 after the last.
    anchors = ssd_anchors([(2, 2), (1, 1)])
    assert anchors.dtype == np.float32 and anchors.shape == (2 * 2 * 3 + 6, 4)
    r2 = math.sqrt(2.0)
    # Cell (0, 0) of the reduced lowest layer, centre (0.25, 0.25): (0.1, 1), (0.2, 2), (0.2, 1/2).
    expected_cell = [[0.20, 0.20, 0.30, 0.30],
                     [0.25 - 0.1 / r2, 0.25 - 0.1 * r2, 0.25 + 0.1 / r2, 0.25 + 0.1 * r2],
                     [0.25 - 0.1 * r2, 0.25 - 0.1 / r2, 0.25 + 0.1 * r2, 0.25 + 0.1 / r2]]
    np.testing.assert_allclose(anchors[0:3], expected_cell, atol=1e-6)
    # Row-major cells: cell (0, 1) is next (centre x 0.75), then (1, 0) (centre y 0.75).
    np.testing.assert_allclose(anchors[3], [0.20, 0.70, 0.30, 0.80], atol=1e-6)
    np.testing.assert_allclose(anchors[6], [0.70, 0.20, 0.80, 0.30], atol=1e-6)
    np.testing.assert_allclose(anchors[9], [0.70, 0.70, 0.80, 0.80], atol=1e-6)
    # The 1x1 layer, centre 0.5: ratios 1, 2, 1/2, 3, 1/3 at 0.95, then ratio 1 at sqrt(0.95).
    expected_top = [_box(0.5, 0.5, 0.95, r) for r in (1.0, 2.0, 0.5, 3.0, 1 / 3)]
    expected_top.append(_box(0.5, 0.5, math.sqrt(0.95 * 1.0), 1.0))
    np.testing.assert_allclose(anchors[12:], expected_top, atol=1e-6)
    np.testing.assert_allclose(anchors[12], [0.025, 0.025, 0.975, 0.975], atol=1e-6)
    # Not clipped: the 3:1 anchor reaches past the image, as in the reference.
    assert anchors[:, 1].min() < 0 and anchors[:, 3].max() > 1


def test_scales_are_linear_over_layers():
    specs = box_specs(6)
    scales = [0.2 + 0.15 * i for i in range(6)]
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    for layer in range(1, 6):
        assert [s for s, _ in specs[layer][:5]] == pytest.approx([scales[layer]] * 5)
        nxt = scales[layer + 1] if layer < 5 else 1.0
        assert specs[layer][5] == pytest.approx((math.sqrt(scales[layer] * nxt), 1.0))


def test_counts_for_ssdlite_320():
    sizes = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    per_location = num_anchors_per_location(len(sizes))
    assert per_location == [3, 6, 6, 6, 6, 6]
    expected = 20 * 20 * 3 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 6 + 2 * 2 * 6 + 1 * 1 * 6
    assert expected == 2034
    assert ssd_anchors(sizes).shape == (expected, 4)
    # The OD API's own test: SSD300 maps 38, 19, 10, 5, 3, 1 give 7308 anchors.
    assert len(ssd_anchors([(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])) == 7308


def test_per_location_counts_follow_the_options():
    assert num_anchors_per_location(3, reduce_boxes_in_lowest_layer=False) == [6, 6, 6]
    assert num_anchors_per_location(2, interpolated_scale_aspect_ratio=0.0) == [3, 5]
    assert num_anchors_per_location(1, aspect_ratios=(1.0, 2.0),
                                    reduce_boxes_in_lowest_layer=False) == [3]


def test_non_square_input_keeps_anchors_square_in_pixels():
    anchors = ssd_anchors([(1, 2)], reduce_boxes_in_lowest_layer=False, image_size=(100, 200))
    h = (anchors[:, 2] - anchors[:, 0]) * 100
    w = (anchors[:, 3] - anchors[:, 1]) * 200
    np.testing.assert_allclose(h[0], w[0], rtol=1e-6)   # ratio 1 is square in pixels
    np.testing.assert_allclose(w[1] / h[1], 2.0, rtol=1e-6)
