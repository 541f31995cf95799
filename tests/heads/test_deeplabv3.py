"""DeepLabv3 head: output shapes at every output stride with and without ASPP, the backbone's
dilation rates, float32 logits under mixed precision, how dilated convs are counted, and the
paper's Table 7 parameter / MAdds figures (docs/paper.md)."""

import json

import keras
import pytest

from mobilevision.backbones.mobilenet_v2 import mobilenet_v2
from mobilevision.cli import main
from mobilevision.heads.deeplabv3 import DEFAULT_RATES, aspp_rates, deeplabv3_head
from mobilevision.profile import profile_model

INPUT_FEATURE = "block_16_project"  # the paper's MNet V2* tap (docs/paper.md, Table 7)


def _segmenter(size, output_stride, aspp, alpha=0.35, num_classes=6, rates=None):
    backbone = mobilenet_v2((*size, 3), alpha=alpha, output_stride=output_stride,
                            taps=(INPUT_FEATURE,))
    feature = backbone.output[INPUT_FEATURE]
    logits = deeplabv3_head(feature, output_stride, num_classes, aspp=aspp,
                            rates=aspp_rates(output_stride, rates), channels=32)
    return keras.Model(backbone.input, logits), feature


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("aspp", [False, True])
def test_head_shapes_at_each_output_stride(output_stride, aspp):
    model, feature = _segmenter((64, 96), output_stride, aspp)
    assert tuple(feature.shape) == (None, 64 // output_stride, 96 // output_stride, 112)
    assert tuple(model.output.shape) == (None, 64, 96, 6)
    assert model.output.dtype == "float32"
    names = {layer.name for layer in model.layers}
    assert {"aspp0", "image_pooling", "concat_projection", "logits"} <= names
    atrous = sorted(n for n in names if n in ("aspp1", "aspp2", "aspp3"))
    assert atrous == (["aspp1", "aspp2", "aspp3"] if aspp else [])
    if aspp:
        rates = [model.get_layer(n).dilation_rate for n in atrous]
        assert rates == [(r, r) for r in DEFAULT_RATES[output_stride]]
    # Projection input: one branch per rate, the 1x1 branch and the image pooling.
    projection = model.get_layer("concat_projection")
    assert projection.kernel.shape[2] == 32 * (2 + 3 * aspp)


def test_default_and_configured_rates():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(32) == (3, 6, 9)
    assert aspp_rates(16, [2, 4]) == (2, 4)
    model, _ = _segmenter((64, 64), 16, True, rates=[1, 2, 3])
    assert model.get_layer("aspp3").dilation_rate == (3, 3)


def _depthwise(model, block):
    prefix = "expanded_conv_" if block == 0 else f"block_{block}_"
    layer = model.get_layer(f"{prefix}depthwise")
    return layer.dilation_rate[0], layer.strides[0]


@pytest.mark.parametrize("output_stride, expected", [
    # block id -> (rate, stride): OS 16 stops downsampling at block 13, OS 8 at block 6.
    (16, {1: (1, 2), 3: (1, 2), 6: (1, 2), 12: (1, 1), 13: (2, 1), 14: (2, 1), 16: (2, 1)}),
    (8, {1: (1, 2), 3: (1, 2), 5: (1, 1), 6: (2, 1), 10: (2, 1), 12: (2, 1), 13: (4, 1),
         15: (4, 1), 16: (4, 1)}),
    (32, {6: (1, 2), 13: (1, 2), 16: (1, 1)}),
])
def test_backbone_dilation_rates(output_stride, expected):
    backbone = mobilenet_v2((64, 64, 3), alpha=0.35, output_stride=output_stride,
                            taps=(INPUT_FEATURE,))
    for block, rate_stride in expected.items():
        assert _depthwise(backbone, block) == rate_stride, block
    assert tuple(backbone.output[INPUT_FEATURE].shape)[1:3] == (64 // output_stride,) * 2


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        feature = keras.Input((4, 4, 16))
        logits = deeplabv3_head(feature, 16, 3, aspp=True, rates=(1, 2, 3), channels=8)
        assert logits.dtype == "float32" and tuple(logits.shape) == (None, 64, 64, 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_dilated_convs_are_counted_over_the_space_to_batch_grid():
    # TensorFlow runs a rate-r conv over H, W rounded up to multiples of r: rate 6 on 8 x 8
    # computes 12 x 12 positions (profile counts them; docs/models.md); rate 2 on 8 x 8 none extra.
    inputs = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(5, 3, dilation_rate=6, padding="same", use_bias=False)(inputs)
    b = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same", use_bias=False)(inputs)
    p = profile_model(keras.Model(inputs, [a, b]))
    assert p["madds_by_type"]["conv"] == 12 * 12 * 3 * 3 * 4 * 5
    assert p["madds_by_type"]["depthwise"] == 8 * 8 * 3 * 3 * 4
    assert p["atrous_padding_madds"] == (12 * 12 - 8 * 8) * 3 * 3 * 4 * 5


@pytest.mark.parametrize("aspp, params, madds", [(False, 2.11e6, 2.75e9), (True, 4.52e6, 5.8e9)])
def test_voc_profile_matches_paper_table_7(aspp, params, madds, capsys):
    assert main(["profile", "--config", "voc_deeplabv3.yaml", "--json",
                 f"model.head.aspp={str(aspp).lower()}"]) == 0
    prof = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prof["output_shapes"] == [[None, 512, 512, 21]]
    assert abs(prof["params"] - params) / params < 0.03, prof["params"]
    assert abs(prof["madds"] - madds) / madds < 0.10, prof["madds"]
    # Exact figures of this build, so a change to the head shows up here.
    assert prof["params"] == (4_556_885 if aspp else 2_145_365)
