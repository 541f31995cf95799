"""ONNX export: every task's model, with random BatchNorm statistics, runs in onnxruntime and
gives the Keras model's outputs (names, shapes, structure, values within 1e-4) at any batch size."""

import sys

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tf2onnx

from mobilevision.config import load_config
from mobilevision.export.onnx import OnnxModel, export_onnx
from mobilevision.tasks import get_task

# Imported here, not skipped when missing: the `[test]` extra installs them, so a missing one
# is a broken install and must fail the run.
REQUIRED = (onnx, onnxruntime, tf2onnx)
ATOL = 1e-4
# name -> (config, overrides): small models (alpha 0.35) of each head. The segmenters cover
# the dilated backbone (output stride 8) and the ASPP branches with image pooling (stride 16).
CASES = {
    "classification": ("shapes_classifier.yaml", ["model.input_size=[64,64]"]),
    "detection": ("shapes_ssdlite.yaml", ["model.input_size=[96,96]"]),
    "segmentation": ("shapes_deeplabv3.yaml", ["model.input_size=[64,64]"]),
    "segmentation_aspp": ("shapes_deeplabv3.yaml", ["model.input_size=[64,64]",
                                                    "model.backbone.output_stride=16",
                                                    "model.head.aspp=true"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory, randomize_batchnorm):
    """-> (Keras model, its ONNX file, images (2, H, W, 3) float32 0..255), made once per case."""
    config, overrides = CASES[request.param]
    cfg = load_config(config, ["model.backbone.alpha=0.35", *overrides])
    model = get_task(cfg).build_model()
    randomize_batchnorm(model, (*cfg.model.input_size, 3), seed=len(request.param))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    images = np.random.default_rng(0).uniform(0, 255, (2, *cfg.model.input_size, 3))
    return model, path, images.astype(np.float32)


def _as_dict(out, names) -> dict:
    return out if isinstance(out, dict) else dict(zip(names, [out]))


def test_file_declares_image_input_and_the_keras_outputs(exported):
    model, path, _ = exported
    graph = onnx.load(str(path)).graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == ["image"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert shape(graph.input[0]) == ["N", *model.input_shape[1:]]
    expected = {name: ["N", *out.shape[1:]] for name, out in
                zip(model.output_names, model.outputs)}
    assert {o.name: shape(o) for o in graph.output} == expected


def test_onnxruntime_matches_keras(exported):
    model, path, images = exported
    onnx_model = OnnxModel(path, num_threads=1)
    want = model.predict_on_batch(images)
    got = onnx_model.predict_on_batch(images)
    assert type(got) is type(want)  # dict for the detector, one array otherwise
    want, got = _as_dict(want, model.output_names), _as_dict(got, model.output_names)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
        # Different images give different outputs, so matching them is not trivially true.
        assert np.abs(want[name][0] - want[name][1]).max() > 1e-3, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=ATOL, err_msg=name)
    # The batch axis is dynamic: one image alone gives its row of the batch of two.
    one = _as_dict(onnx_model.predict_on_batch(images[:1]), model.output_names)
    for name in want:
        np.testing.assert_allclose(one[name], want[name][:1], rtol=0, atol=ATOL, err_msg=name)


def test_onnx_model_stands_in_for_keras(exported):
    model, path, images = exported
    onnx_model = OnnxModel(path)
    assert onnx_model.input_shape == model.input_shape
    batch = np.concatenate([images, images[:1]]).round()  # 3 images of whole pixel values
    whole = _as_dict(onnx_model.predict_on_batch(batch), model.output_names)
    parts = _as_dict(onnx_model.predict(batch, batch_size=2), model.output_names)  # 2 + 1
    uint8 = _as_dict(onnx_model.predict_on_batch(batch.astype(np.uint8)), model.output_names)
    for name in whole:
        np.testing.assert_allclose(parts[name], whole[name], rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(uint8[name], whole[name], err_msg=name)


def _tiny_two_output_model():
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(2, 3, padding="same")(image)
    return keras.Model(image, [x, keras.layers.GlobalAveragePooling2D()(x)])


def test_list_outputs_keep_their_order_and_given_names(tmp_path):
    model = _tiny_two_output_model()
    path = export_onnx(model, tmp_path / "new" / "tiny.onnx", output_names=["map", "mean"])
    onnx_model = OnnxModel(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    got, want = onnx_model.predict_on_batch(x), model.predict_on_batch(x)
    assert isinstance(got, list) and onnx_model.output_names == ["map", "mean"]
    for g, w in zip(got, want):
        # Outputs reach a few hundred (unseeded weights, pixels 0..255): float32 rounding of a
        # sum in another order is relative, ~1e-7 of the value (measured 1.2e-4 at -296.8).
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=ATOL)


def test_export_replaces_the_file_and_leaves_no_temporary(tmp_path):
    model = _tiny_two_output_model()
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"old")
    export_onnx(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]
    onnx.checker.check_model(str(path))
    with pytest.raises(ValueError, match="output_names"):
        export_onnx(model, tmp_path / "bad.onnx", output_names=["only_one"])
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("module", ["tf2onnx", "onnx", "onnxruntime"])
def test_missing_package_names_the_extra(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"mobilevision\[onnx\]"):
        if module == "onnxruntime":
            OnnxModel(tmp_path / "any.onnx")
        else:
            export_onnx(_tiny_two_output_model(), tmp_path / "any.onnx")
