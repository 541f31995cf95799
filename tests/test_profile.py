"""profile_model: parameters, multiply-adds and peak activation bytes."""

import pytest

import keras

from mobilevision.profile import format_profile, profile_model

# docs/paper.md: keras.applications.MobileNetV2, 1000 classes, 224 x 224.
REFERENCE = {
    0.35: (1_691_208, 59.3e6),
    0.5: (1_987_224, 97.1e6),
    0.75: (2_663_064, 209.1e6),
    1.0: (3_538_984, 300.8e6),
    1.4: (6_156_712, 582.2e6),
}


@pytest.fixture(scope="module", params=[0.35, 1.0, 1.4])
def mobilenet(request):
    alpha = request.param
    model = keras.applications.MobileNetV2(
        weights=None, alpha=alpha, input_shape=(224, 224, 3), classes=1000
    )
    return alpha, model


def test_mobilenet_v2_matches_paper_figures(mobilenet):
    alpha, model = mobilenet
    params, madds = REFERENCE[alpha]
    p = profile_model(model)
    assert p["params"] == params
    assert p["trainable_params"] < params  # BatchNorm moving statistics
    assert abs(p["madds"] - madds) / madds < 0.01
    assert sum(p["madds_by_type"].values()) == p["madds"]
    assert p["madds_by_type"]["dense"] == max(1280, int(1280 * alpha)) * 1000
    assert sum(r["params"] for r in p["layers"]) == params
    assert sum(r["madds"] for r in p["layers"]) == p["madds"]
    assert [r["name"] for r in p["layers"]][:3] == ["Conv1", "bn_Conv1", "Conv1_relu"]
    assert p["layers"][-1]["name"] == "predictions"
    if alpha == 1.0:
        # block_1_expand_relu (112x112x96) is alive while block_1_pad (113x113x96) is written.
        assert p["peak_activation_bytes"] == (112 * 112 + 113 * 113) * 96 * 4
        assert p["peak_activation_layer"] == "block_1_pad"
        text = format_profile(p)
        assert text.splitlines()[0].startswith("params") and "3,538,984" in text
        assert "block_16_project" in text


def _tiny_layers():
    return [
        keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv"),
        keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
        keras.layers.Dense(5, name="fc"),
    ]


def _tiny_flat():
    conv, dw, fc = _tiny_layers()
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, fc(dw(conv(inputs))))


def _tiny_nested():
    conv, dw, fc = _tiny_layers()
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, dw(conv(inner_in)), name="inner")
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, fc(inner(inputs)))


# By hand, 8x8x3 input, float32:
#   conv: 3x3 stride 2 "same" -> 4x4x4: 16 positions * 3*3*3 * 4 = 1728 MAdds, 3*3*3*4+4 params
#   dw:   3x3 "same" -> 4x4x4:          16 positions * 3*3 * 4   =  576 MAdds, 3*3*4+4 params
#   fc:   Dense(5) on 4x4x4 -> 4x4x5:   16 positions * 4 * 5     =  320 MAdds, 4*5+5 params
# Live bytes (batch 1): input 192*4=768, conv 64*4=256, dw 256, fc 80*4=320.
#   conv runs: input + conv = 1024 (peak); dw runs: 512; fc runs: 576.
TINY = {"params": 112 + 40 + 25, "madds": 1728 + 576 + 320, "peak": 768 + 256}


@pytest.mark.parametrize("build", [_tiny_flat, _tiny_nested])
def test_tiny_model_by_hand(build):
    p = profile_model(build())
    assert p["params"] == p["trainable_params"] == TINY["params"]
    assert p["madds"] == TINY["madds"]
    assert p["madds_by_type"] == {"conv": 1728, "depthwise": 576, "dense": 320}
    assert p["peak_activation_bytes"] == TINY["peak"]
    assert p["peak_activation_layer"].endswith("conv")
    assert [(r["name"], r["output_shape"], r["params"], r["madds"]) for r in p["layers"]] == [
        ("conv", (None, 4, 4, 4), 112, 1728),
        ("dw", (None, 4, 4, 4), 40, 576),
        ("fc", (None, 4, 4, 5), 25, 320),
    ]
    assert profile_model(build(), batch_size=3)["peak_activation_bytes"] == 3 * TINY["peak"]


def test_nested_scope_is_reported():
    rows = profile_model(_tiny_nested())["layers"]
    assert [r["scope"] for r in rows] == ["inner", "inner", ""]


def test_other_convolutions_by_hand():
    inputs = keras.Input((8, 8, 3))
    grouped = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same", groups=3)(inputs)
    separable = keras.layers.SeparableConv2D(4, 3)(inputs)  # valid -> 6x6
    up = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(
        keras.layers.Conv2D(4, 1, strides=2)(inputs)  # 4x4x4: 16 * 3*4 = 192
    )
    p = profile_model(keras.Model(inputs, [grouped, separable, up]))
    assert p["madds_by_type"] == {
        "conv": 64 * 3 * 3 * 1 * 6  # grouped, dilated: kernel (3, 3, 3/groups, 6)
        + 36 * 3 * 4  # separable pointwise
        + 192  # 1x1 stride 2
        + 16 * 3 * 3 * 2 * 4,  # transposed: every input position, kernel (3, 3, 2, 4)
        "depthwise": 36 * 3 * 3 * 3,  # separable depthwise
        "dense": 0,
    }


def test_dict_outputs_and_shared_layer():
    shared = keras.layers.Conv2D(2, 1, name="shared")
    inputs = keras.Input((4, 4, 3))
    full = shared(inputs)
    half = shared(keras.layers.AveragePooling2D(2, name="pool")(inputs))
    p = profile_model(keras.Model(inputs, {"full": full, "half": half}))
    assert p["params"] == 8
    assert p["madds"] == 16 * 3 * 2 + 4 * 3 * 2  # the shared conv runs at both sizes
    rows = [(r["name"], r["output_shape"], r["params"]) for r in p["layers"]]
    # Keras runs deeper nodes first; params are counted at a layer's first call only.
    assert rows == [
        ("pool", (None, 2, 2, 3), 0),
        ("shared", (None, 2, 2, 2), 8),
        ("shared", (None, 4, 4, 2), 0),
    ]
    assert p["output_shapes"] == [(None, 4, 4, 2), (None, 2, 2, 2)]  # dict keys sorted
    # Bytes: input 192, pooled 48, half 32, full 128. pool: 192+48; shared on pooled:
    # 192+48+32, then pooled is freed; shared on input: 192+32+128 = 352 (outputs stay alive).
    assert p["peak_activation_bytes"] == 192 + 32 + 128


def test_unknown_input_size_needs_input_shape():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs))
    with pytest.raises(ValueError, match="input_shape"):
        profile_model(model)
    p = profile_model(model, input_shape=(8, 8, 3))
    assert p["madds"] == 1728 and p["layers"][0]["output_shape"] == (None, 4, 4, 4)


def test_sequential_and_rejects_subclassed():
    seq = keras.Sequential([keras.Input((8, 8, 3)), *_tiny_layers()])
    assert profile_model(seq)["madds"] == TINY["madds"]

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional"):
        profile_model(Sub())


def test_opaque_submodel_is_noted():
    class Block(keras.Model):
        def __init__(self):
            super().__init__(name="block")
            self.fc = keras.layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    inputs = keras.Input((4,))
    p = profile_model(keras.Model(inputs, keras.layers.Dense(2)(Block()(inputs))))
    assert p["params"] == 15 + 8
    assert p["madds"] == 3 * 2  # the subclassed block's Dense is not counted ...
    assert p["notes"] and "block" in p["notes"][0]  # ... and the profile says so
    assert "note: block" in format_profile(p)
