"""MobileNetV2 backbone: shapes and strides of every tap at every output stride, dilation rates,
exact parameter counts (docs/paper.md), and parity with keras.applications through weight files."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import mobilevision as mv
from mobilevision.backbones.mobilenet_v2 import (DEFAULT_TAPS, block_plan, feature_specs,
                                                 make_divisible, mobilenet_v2)
from mobilevision.backbones.weights import WeightsMismatchError

# keras.applications.MobileNetV2, 1000 classes (docs/paper.md reference table).
PAPER_PARAMS = {0.35: 1_691_208, 0.5: 1_987_224, 0.75: 2_663_064, 1.0: 3_538_984, 1.4: 6_156_712}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(160, 160), (128, 192)])
def test_every_tap_has_the_shape_its_stride_says(output_stride, size):
    h, w = size
    model = mobilenet_v2((h, w, 3), alpha=0.35, output_stride=output_stride)
    x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32")
    out = model(x)
    specs = feature_specs(0.35, output_stride)
    expected_strides = {"block_1_expand_relu": 2, "block_3_expand_relu": 4, "block_6_expand_relu": 8,
                        "block_13_expand_relu": 16, "block_16_project": 32, "out_relu": 32}
    for tap in DEFAULT_TAPS:
        channels, stride = specs[tap]
        assert stride == min(expected_strides[tap], output_stride), tap
        assert tuple(out[tap].shape) == (1, h // stride, w // stride, channels), tap
    # Width 0.35: block 12 outputs make_divisible(96 * 0.35) = 32 channels, expanded 6x to 192
    # at block 13; the last 1280-channel conv is not reduced for alpha < 1 (docs/paper.md).
    assert specs["block_13_expand_relu"][0] == 192 and specs["out_relu"][0] == 1280


def test_channel_rounding_matches_paper_table():
    specs = feature_specs(1.0, 32)
    assert specs["block_13_expand_relu"] == (576, 16)
    assert specs["block_16_project"] == (320, 32)
    assert specs["out_relu"] == (1280, 32)
    assert feature_specs(1.4, 32)["out_relu"][0] == 1792
    assert make_divisible(32 * 0.35) == 16 and make_divisible(16 * 0.35) == 8


def _rates(model):
    return {l.name.removesuffix("_depthwise"): (l.strides[0], l.dilation_rate[0])
            for l in model.layers if isinstance(l, keras.layers.DepthwiseConv2D)}


def test_dilation_rates_at_output_stride_16_and_8():
    # docs/paper.md: OS 16 -> the 160/320 blocks (13-16) use rate 2; OS 8 -> blocks from the first
    # 64-channel block (6) use rate 2 and the 160/320 blocks rate 4. Never resizing: stride 1.
    os16 = _rates(mobilenet_v2((64, 64, 3), 0.35, output_stride=16, taps=("out_relu",)))
    for i in range(1, 13):
        assert os16[f"block_{i}"][1] == 1
    for i in (13, 14, 15, 16):
        assert os16[f"block_{i}"] == (1, 2)
    assert os16["block_6"] == (2, 1)
    os8 = _rates(mobilenet_v2((64, 64, 3), 0.35, output_stride=8, taps=("out_relu",)))
    for i in range(1, 6):
        assert os8[f"block_{i}"][1] == 1
    for i in range(6, 13):
        assert os8[f"block_{i}"] == (1, 2)
    for i in (13, 14, 15, 16):
        assert os8[f"block_{i}"] == (1, 4)
    os32 = _rates(mobilenet_v2((64, 64, 3), 0.35, output_stride=32, taps=("out_relu",)))
    assert all(rate == 1 for _, rate in os32.values())
    assert [b.stride for b in block_plan(1.0, 32)].count(2) == 4


def test_taps_truncate_the_graph():
    model = mobilenet_v2((64, 64, 3), 1.0, taps=("block_16_project",))
    names = {l.name for l in model.layers}
    assert "block_16_project" in names and "Conv_1" not in names and "out_relu" not in names
    with pytest.raises(ValueError, match="unknown feature taps"):
        mobilenet_v2((64, 64, 3), 1.0, taps=("block_99_project",))


@pytest.mark.parametrize("alpha", sorted(PAPER_PARAMS))
def test_classifier_params_equal_keras_applications_table(alpha):
    # Parameter counts do not depend on the input size; build small to keep the test fast.
    cfg = mv.load_config("imagenet_mobilenetv2.yaml",
                         [f"model.backbone.alpha={alpha}", "model.input_size=[64,64]"])
    assert mv.build_model(cfg).count_params() == PAPER_PARAMS[alpha]


def test_alpha_1_3_matches_keras_applications():
    ref = keras.applications.MobileNetV2(weights=None, alpha=1.3, input_shape=(64, 64, 3))
    cfg = mv.load_config("imagenet_mobilenetv2.yaml", ["model.backbone.alpha=1.3",
                                                       "model.input_size=[64,64]"])
    assert mv.build_model(cfg).count_params() == ref.count_params()


def _randomized_reference(alpha, size, seed):
    """keras.applications.MobileNetV2 with random weights and non-trivial BatchNorm statistics."""
    ref = keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3))
    rng = np.random.default_rng(seed)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])
        elif isinstance(layer, keras.layers.Dense):
            k, b = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.05, k.shape), rng.normal(0, 0.5, b.shape)])
    return ref


@pytest.mark.parametrize("alpha, fmt", [(0.35, "weights_h5"), (1.0, "legacy_h5"),
                                        (1.4, "weights_h5")])
def test_same_probabilities_as_keras_applications(alpha, fmt, tmp_path):
    size = 128
    ref = _randomized_reference(alpha, size, seed=int(alpha * 100))
    if fmt == "weights_h5":
        path = tmp_path / "ref.weights.h5"
        ref.save_weights(path)
    else:  # the layout keras.applications distributes (mobilenet_v2_weights_tf_..._224.h5)
        path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    cfg = mv.load_config("imagenet_mobilenetv2.yaml", [
        f"model.backbone.alpha={alpha}", f"model.input_size=[{size},{size}]",
        f"model.weights={path}"])
    model = mv.build_model(cfg)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, size, size, 3)).astype("float32")
    expected = ref.predict(keras.applications.mobilenet_v2.preprocess_input(pixels.copy()), verbose=0)
    got = model.predict(pixels, verbose=0)["probabilities"]  # decoded: the same softmax
    assert expected.std() > 1e-4  # the check is not vacuous: probabilities vary
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # uint8 pixels work too: the model normalizes inside.
    np.testing.assert_allclose(model.predict(pixels.astype("uint8"), verbose=0)["probabilities"],
                               ref.predict(keras.applications.mobilenet_v2.preprocess_input(
                                   pixels.astype("uint8").astype("float32")), verbose=0), atol=1e-4)


def test_backbone_weights_from_no_top_file_and_mismatch_names_layers(tmp_path):
    ref = _randomized_reference(0.35, 96, seed=3)
    no_top = keras.Model(ref.input, ref.get_layer("out_relu").output)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    no_top.save_weights(path)
    cfg = mv.load_config(None, ["model.backbone.alpha=0.35", "model.input_size=[96,96]",
                                f"model.backbone.weights={path}"])
    backbone = mv.build_backbone(cfg, taps=["out_relu"])
    x = np.random.default_rng(2).uniform(0, 255, (1, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(backbone(x)["out_relu"],
                               no_top(keras.applications.mobilenet_v2.preprocess_input(x.copy())),
                               atol=1e-4)
    wrong = mv.load_config(None, ["model.backbone.alpha=0.5", "model.input_size=[96,96]",
                                  f"model.backbone.weights={path}"])
    with pytest.raises(WeightsMismatchError) as e:
        mv.build_backbone(wrong, taps=["out_relu"])
    assert str(path) in str(e.value) and "block_1_project" in str(e.value)


@pytest.mark.parametrize("config", ["shapes_classifier.yaml", "shapes_ssdlite.yaml",
                                    "shapes_deeplabv3.yaml"])
def test_get_config_round_trip_gives_the_same_model_and_decoder(config):
    """Serialized and rebuilt (Keras' registered class, not a plain functional model), each task
    model keeps its layers, its decoder and its decoded outputs."""
    cfg = mv.load_config(config, ["model.input_size=[64,64]", "model.backbone.alpha=0.35"])
    model = mv.build_model(cfg)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(clone) is type(model)
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    want, got = model.predict(x, verbose=0), clone.predict(x, verbose=0)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]


def test_build_backbone_gives_the_multi_scale_taps_and_a_task_only_its_heads():
    cfg = mv.load_config("shapes_deeplabv3.yaml")
    assert set(mv.build_backbone(cfg).output) == set(DEFAULT_TAPS)
    model = mv.build_model(cfg)  # DeepLab reads block_16_project: no 1280-channel conv built
    assert not any(layer.name in ("Conv_1", "out_relu") for layer in model.get_layer("mobilenet_v2").layers)
