"""ONNX export: every task's model, with random BatchNorm statistics, runs in onnxruntime and
gives what the Keras model's `predict` gives (the decoded outputs, NMS included: names, shapes,
values within 1e-4) at any batch size."""

import sys

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tf2onnx

from mobilevision.config import load_config
from mobilevision.export.onnx import export_onnx
from mobilevision.export.runtime import OnnxRunner
from mobilevision.tasks import build_model
from mobilevision.tasks.base import DecodingModel

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
DECODED = {"classification": {"probabilities"}, "detection": {"boxes", "classes", "scores",
                                                              "count"},
           "segmentation": {"scores"}, "segmentation_aspp": {"scores"}}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory, randomize_batchnorm):
    """-> (case, Keras model, its ONNX file, images (2, H, W, 3) float32 0..255), made once per
    case."""
    config, overrides = CASES[request.param]
    cfg = load_config(config, ["model.backbone.alpha=0.35", *overrides])
    keras.utils.set_random_seed(3)
    model = build_model(cfg)
    randomize_batchnorm(model, (*cfg.model.input_size, 3), seed=len(request.param))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx",
                       metadata={"mobilevision": "{}"})
    images = np.random.default_rng(0).uniform(0, 255, (2, *cfg.model.input_size, 3))
    return request.param, model, path, images.astype(np.float32)


def test_file_declares_image_input_and_the_decoded_outputs(exported):
    case, model, path, _ = exported
    proto = onnx.load(str(path))
    graph = proto.graph

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == ["image"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert shape(graph.input[0]) == ["N", *model.input_shape[1:]]
    assert {o.name for o in graph.output} == DECODED[case]
    assert all(shape(o)[0] == "N" for o in graph.output)
    assert {p.key: p.value for p in proto.metadata_props}["mobilevision"] == "{}"
    if case == "detection":  # NMS inside the file, as the ONNX operator
        assert "NonMaxSuppression" in {n.op_type for n in graph.node}


def test_onnxruntime_matches_keras_predict(exported):
    case, model, path, images = exported
    runner = OnnxRunner(path, threads=1)
    assert runner.input_size == tuple(model.input_shape[1:3])
    want = model.predict_on_batch(images)
    got = runner(images)
    assert got.keys() == want.keys() == DECODED[case]
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32, name
        # Different images give different outputs, so matching them is not trivially true (a
        # random detector keeps its 100 best boxes for both: the count may agree).
        if name != "count":
            assert np.abs(want[name][0] - want[name][1]).max() > 1e-3, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=ATOL, err_msg=name)
    # The batch axis is dynamic: one image alone gives its row of the batch of two, and uint8
    # pixels give what their float values give.
    one = runner(images[:1].round().astype(np.uint8))
    two = runner(images.round())
    for name in want:
        np.testing.assert_allclose(one[name], two[name][:1], rtol=0, atol=ATOL, err_msg=name)


@keras.saving.register_keras_serializable(package="mobilevision_tests")
class _Tiny(DecodingModel):
    def decode(self, raw):
        return {"mean": keras.ops.mean(raw, axis=(1, 2)), "map": raw}


def _tiny_model():
    image = keras.Input((8, 8, 3), name="image")
    return _Tiny(image, keras.layers.Conv2D(2, 3, padding="same")(image), name="tiny")


def test_any_model_that_owns_its_decoder_exports(tmp_path):
    model = _tiny_model()
    path = export_onnx(model, tmp_path / "new" / "tiny.onnx")
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    got, want = OnnxRunner(path)(x), model.predict_on_batch(x)
    assert got.keys() == want.keys() == {"mean", "map"}
    for name in want:
        # Outputs reach a few hundred (unseeded weights, pixels 0..255): float32 rounding of a
        # sum in another order is relative, ~1e-7 of the value (measured 1.2e-4 at -296.8).
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=ATOL)


def test_export_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"old")
    export_onnx(_tiny_model(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]
    onnx.checker.check_model(str(path))


@pytest.mark.parametrize("module", ["tf2onnx", "onnx", "onnxruntime"])
def test_missing_package_names_the_extra(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"mobilevision\[onnx\]"):
        if module == "onnxruntime":
            OnnxRunner(tmp_path / "any.onnx")
        else:
            export_onnx(_tiny_model(), tmp_path / "any.onnx")
