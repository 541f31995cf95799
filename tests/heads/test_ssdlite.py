"""SSDLite head: output shapes and per-map sizes at several input sizes, the output order the
anchor generator relies on, extra-layer depths under a width multiplier, float32 outputs under
mixed precision, and the paper's parameter / MAdds figures (docs/paper.md, Table 6)."""

import keras
import numpy as np
import pytest

from mobilevision.backbones.mobilenet_v2 import mobilenet_v2
from mobilevision.heads.ssdlite import extra_layer_depths, ssdlite_head
from mobilevision.ops.anchors import SSDAnchorGenerator
from mobilevision.profile import profile_model

RECIPE_ANCHORS = [3, 6, 6, 6, 6, 6]  # 3 on the lowest map, 6 elsewhere (reference recipe)
TAPS = ("block_13_expand_relu", "out_relu")  # the paper's taps (docs/paper.md, SSDLite)


def _detector(size, alpha, num_classes, output_stride=32):
    backbone = mobilenet_v2((*size, 3), alpha=alpha, output_stride=output_stride, taps=TAPS)
    outputs, sizes = ssdlite_head([backbone.output[t] for t in TAPS], num_classes,
                                  SSDAnchorGenerator(), depth_multiplier=alpha)
    return keras.Model(backbone.input, outputs, name="ssdlite"), sizes


def _num_anchors(sizes, num_anchors=RECIPE_ANCHORS):
    return sum(h * w * a for (h, w), a in zip(sizes, num_anchors))


def _tiny_features():
    """Stand-in backbone maps: the head only sees shapes."""
    return [keras.Input((8, 8, 24), name="fine"), keras.Input((4, 4, 32), name="coarse")]


@pytest.fixture(scope="module")
def coco320():
    return _detector((320, 320), 1.0, 80)


def test_coco_320_shapes(coco320):
    model, sizes = coco320
    assert sizes == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = 3 * 400 + 6 * (100 + 25 + 9 + 4 + 1)
    assert anchors == _num_anchors(sizes) == 2034
    out = model(np.zeros((1, 320, 320, 3), "float32"))
    assert tuple(out["boxes"].shape) == (1, anchors, 4)
    assert tuple(out["classes"].shape) == (1, anchors, 81)  # 80 classes + background


def test_coco_320_matches_paper_and_reference_build(coco320):
    model, _ = coco320
    stats = profile_model(model)
    # docs/paper.md: "MNet V2 + SSDLite: 4.3M params, 0.8B MAdds"; a reference build of that design
    # measures 4,387,765 params and 0.789B MAdds. Params count every weight, BN moving mean and
    # variance included (keras `count_params`); MAdds count convs only (no bias, BN, ReLU).
    assert stats["params"] == 4_387_765
    assert abs(stats["params"] / 4.3e6 - 1) <= 0.03
    assert stats["madds"] == 788_830_144
    assert abs(stats["madds"] / 0.8e9 - 1) <= 0.05
    # The head alone: docs/paper.md's "SSDLite head (80 classes) 2.1M params".
    head = sum(int(np.prod(w.shape)) for l in model.layers if l.name.startswith("ssd_")
               for w in l.weights)
    assert abs(head / 2.1e6 - 1) <= 0.03
    # At alpha 1 the extra layers are exactly 512, 256, 256, 128 deep (256, 128, 128, 64 inside).
    for i, depth in enumerate((512, 256, 256, 128), 1):
        assert model.get_layer(f"ssd_extra_{i}_project").filters == depth
        assert model.get_layer(f"ssd_extra_{i}_expand").filters == depth // 2


@pytest.mark.parametrize("size", [(256, 384), (300, 300)])
def test_any_input_size(size):
    model, sizes = _detector(size, 0.35, 5)
    if size == (256, 384):
        assert sizes == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    else:  # not a multiple of 32: every halving rounds up, as "SAME" padding does
        assert sizes == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    n = _num_anchors(sizes)
    assert tuple(model.output["boxes"].shape) == (None, n, 4)
    assert tuple(model.output["classes"].shape) == (None, n, 6)


def test_small_build_order_puts_block_13_first():
    model, sizes = _detector((128, 128), 0.35, 3)
    assert sizes == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    # The first predictors read block_13_expand_relu (192 channels at alpha 0.35, stride 16),
    # the second out_relu (1280 channels, stride 32).
    assert model.get_layer("ssd_box_0_depthwise").input.shape[1:] == (8, 8, 192)
    assert model.get_layer("ssd_class_0_depthwise").input.shape[1:] == (8, 8, 192)
    assert model.get_layer("ssd_box_1_depthwise").input.shape[1:] == (4, 4, 1280)
    # Extra depths follow the OD API: max(int(d * alpha), 16).
    assert extra_layer_depths(0.35) == [(89, 179), (44, 89), (44, 89), (22, 44)]
    assert extra_layer_depths(0.1) == [(25, 51), (16, 25), (16, 25), (16, 16)]
    assert model.get_layer("ssd_extra_4_project").filters == 44

    # Row order: maps in order, then cells row-major (y, x), then anchors. Rebuild the
    # concatenation from the predictor convs (N, h, w, A * k): a C-order reshape of each to
    # (N, h * w * A, k) must give the head's outputs exactly.
    convs = {kind: [model.get_layer(f"ssd_{kind}_{i}_conv").output for i in range(6)]
             for kind in ("box", "class")}
    probe = keras.Model(model.input, {**model.output, **convs})
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    out = probe(x)
    for kind, key, k in (("box", "boxes", 4), ("class", "classes", 3 + 1)):
        maps = [np.asarray(t) for t in out[kind]]
        for m, (h, w), a in zip(maps, sizes, RECIPE_ANCHORS):
            assert m.shape == (2, h, w, a * k)
        expected = np.concatenate([m.reshape(2, -1, k) for m in maps], axis=1)
        np.testing.assert_array_equal(np.asarray(out[key]), expected)
    # block_13's 8 * 8 * 3 anchors come first.
    first = np.asarray(out["box"][0]).reshape(2, -1, 4)
    assert first.shape[1] == 192
    np.testing.assert_array_equal(np.asarray(out["boxes"])[:, :192], first)


def test_float32_outputs_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        features = _tiny_features()
        outputs, _ = ssdlite_head(features, 2, SSDAnchorGenerator(), extra_depths=(32, 32, 32, 32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs["boxes"].dtype == "float32" and outputs["classes"].dtype == "float32"


def test_config_round_trip_and_errors():
    features = _tiny_features()
    outputs, _ = ssdlite_head(features, 2, SSDAnchorGenerator(), weight_decay=4e-5)
    model = keras.Model(features, outputs)
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert len(model.losses) > 0  # weight decay reaches the head's kernels
    with pytest.raises(ValueError, match="at least one feature map"):
        ssdlite_head([], 2, SSDAnchorGenerator())
    with pytest.raises(ValueError, match="static size"):
        ssdlite_head([keras.Input((None, None, 8))], 2, SSDAnchorGenerator())


@pytest.mark.parametrize("output_stride, sizes", [
    # Both taps at the output stride; the extras halve from there: 16, 32, 64, 128 at OS 16.
    (16, [(8, 12), (8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]),
    (8, [(16, 24), (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]),
])
def test_extra_layers_downsample_from_the_last_taps_stride(output_stride, sizes):
    model, got = _detector((128, 192), 0.35, 3, output_stride=output_stride)
    assert got == sizes
    n = sum(h * w * a for (h, w), a in zip(sizes, RECIPE_ANCHORS))
    assert tuple(model.output["boxes"].shape) == (None, n, 4)
    assert len(SSDAnchorGenerator()(got, (128, 192))) == n


def test_one_map_and_three_maps():
    """Any number of taps: the anchors per location follow the number of maps."""
    one = [keras.Input((8, 8, 16))]
    outputs, sizes = ssdlite_head(one, 2, SSDAnchorGenerator(), extra_depths=(32,))
    assert sizes == [(8, 8), (4, 4)]
    assert outputs["classes"].shape[1] == 8 * 8 * 3 + 4 * 4 * 6
    three = [keras.Input((16, 16, 8)), keras.Input((8, 8, 16)), keras.Input((4, 4, 16))]
    outputs, sizes = ssdlite_head(three, 2, SSDAnchorGenerator(), extra_depths=())
    assert sizes == [(16, 16), (8, 8), (4, 4)]
    assert outputs["boxes"].shape[1] == 16 * 16 * 3 + 6 * (64 + 16)
