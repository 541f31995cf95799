"""Name-based weight loading from legacy .h5, Keras 3 .weights.h5 and .keras files; a model's
own checkpoints with Keras' own loader; `load_model_weights` choosing between the two.

The source is a keras.applications MobileNetV2 (weights=None) with every variable, BatchNorm
moving statistics included, set to random values, so a layer loaded into the wrong place shows.
"""

import shutil
import warnings

import h5py
import numpy as np
import pytest

import keras
from keras.src.legacy.saving import legacy_h5_format

from mobilevision.backbones.weights import (
    LoadReport,
    WeightsFileError,
    WeightsMismatchError,
    _model_units,
    layer_names_with_weights,
    load_checkpoint,
    load_model_weights,
    load_weights_by_name,
)

SHAPE = (96, 96, 3)


def _mobilenet(alpha=0.35, include_top=True):
    return keras.applications.MobileNetV2(
        weights=None, alpha=alpha, include_top=include_top, input_shape=SHAPE
    )


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        v.assign(value.astype("float32"))


def _zero(model):
    for v in model.weights:
        v.assign(np.zeros(tuple(v.shape), "float32"))


def _layers_by_name(model):
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(_layers_by_name(layer))
        out[layer.name] = layer
    return out


def _assert_same_weights(source, target, names):
    src, dst = _layers_by_name(source), _layers_by_name(target)
    assert names
    for name in names:
        a, b = src[name].get_weights(), dst[name].get_weights()
        assert len(a) == len(b), name
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=name)


def _write_keras2_h5(model, path):
    """Write `model` the way Keras 2 / tf.keras wrote keras.applications weight files."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.6"
        for layer in sorted(model.layers, key=lambda l: l.name):
            g = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{w.name}:0".encode("utf8") for w in weights]
            g.attrs["weight_names"] = names
            for name, w in zip(names, weights):
                g.create_dataset(name.decode("utf8"), data=keras.ops.convert_to_numpy(w))


def _strip_names(src, dst):
    """Copy a .weights.h5 without the per-layer `name` attributes (older Keras 3 files)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        f.visititems(visit)


def _classifier(backbone, classes=1000, head_name="predictions"):
    """Our task models' shape: a functional model calling a backbone model as a layer."""
    inputs = keras.Input(SHAPE)
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, name=head_name)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def source():
    model = _mobilenet()
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    paths = {
        "weights_h5": str(d / "mnv2.weights.h5"),
        "legacy_keras3": str(d / "mnv2_legacy.h5"),
        "legacy_keras2": str(d / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"),
        "unnamed": str(d / "mnv2_unnamed.weights.h5"),
        "keras_zip": str(d / "mnv2.keras"),
        "legacy_full_model": str(d / "mnv2_model.h5"),
    }
    source.save_weights(paths["weights_h5"])
    with h5py.File(paths["legacy_keras3"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    _write_keras2_h5(source, paths["legacy_keras2"])
    _strip_names(paths["weights_h5"], paths["unnamed"])
    source.save(paths["keras_zip"])
    source.save(paths["legacy_full_model"])  # weights under model_weights/
    return paths


@pytest.fixture(scope="module")
def target():
    return _mobilenet()


@pytest.fixture(scope="module")
def target_no_top():
    return _mobilenet(include_top=False)


@pytest.fixture(scope="module")
def nested():
    return _classifier(_mobilenet(include_top=False))


@pytest.mark.parametrize(
    "kind", ["weights_h5", "legacy_keras3", "legacy_keras2", "keras_zip", "legacy_full_model"]
)
def test_loads_every_format_by_name(kind, files, source, target):
    _zero(target)
    report = load_weights_by_name(target, files[kind])
    assert isinstance(report, LoadReport)
    assert report.matched_by == "name"
    assert report.file_format == {"weights_h5": "weights_h5", "keras_zip": "keras_zip"}.get(
        kind, "legacy_h5"
    )
    assert report.loaded == layer_names_with_weights(target)
    assert report.missing == report.unused == report.mismatched == []
    _assert_same_weights(source, target, report.loaded)


def test_layer_names_with_weights_in_model_order(target, target_no_top):
    names = layer_names_with_weights(target)
    assert names[:3] == ["Conv1", "bn_Conv1", "expanded_conv_depthwise"]
    assert names[-3:] == ["Conv_1", "Conv_1_bn", "predictions"]
    assert len(names) == 35 + 17 + 52 + 1  # conv, depthwise, batchnorm, dense
    assert layer_names_with_weights(target_no_top) == names[:-1]


@pytest.mark.parametrize("kind", ["weights_h5", "legacy_keras2"])
def test_top_file_into_backbone_reports_unused(kind, files, source, target_no_top):
    _zero(target_no_top)
    report = load_weights_by_name(target_no_top, files[kind])
    assert report.missing == report.mismatched == []
    assert report.unused == ["predictions"]
    _assert_same_weights(source, target_no_top, layer_names_with_weights(target_no_top))
    with pytest.raises(WeightsMismatchError, match="predictions"):
        load_weights_by_name(target_no_top, files[kind], allow_unused=False)


@pytest.mark.parametrize("kind", ["weights_h5", "legacy_keras3", "legacy_keras2", "unnamed"])
def test_flat_file_into_nested_classifier(kind, files, source, nested):
    _zero(nested)
    report = load_weights_by_name(nested, files[kind])
    assert report.missing == report.mismatched == [], report
    assert report.matched_by == ("position" if kind == "unnamed" else "name")
    assert report.loaded == layer_names_with_weights(nested)
    assert report.loaded[-1] == "predictions" and report.unused == []
    _assert_same_weights(source, nested, report.loaded)


def test_unnamed_file_loads_by_position(files, source, target, target_no_top):
    _zero(target)
    report = load_weights_by_name(target, files["unnamed"])
    assert report.missing == report.mismatched == [] and report.matched_by == "position"
    _assert_same_weights(source, target, report.loaded)
    _zero(target_no_top)
    report = load_weights_by_name(target_no_top, files["unnamed"])
    assert report.missing == report.mismatched == [] and report.unused == ["layers/dense"]
    _assert_same_weights(source, target_no_top, report.loaded)


def test_save_paths_follow_keras_naming(nested, tmp_path):
    """Our reconstruction of Keras 3 save paths agrees with the names Keras records."""
    path = str(tmp_path / "nested.weights.h5")
    nested.save_weights(path)
    recorded = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.endswith("vars") and len(obj):
                recorded[obj.attrs["name"]] = name[: -len("/vars")]
        f.visititems(visit)
    ours = {u.name: u.key for u in _model_units(nested)}
    assert ours == recorded
    assert ours["Conv1"] == "layers/functional/layers/conv2d"
    assert ours["block_16_project_BN"] == "layers/functional/layers/batch_normalization_50"
    assert ours["predictions"] == "layers/dense"


def test_own_nested_file_round_trip(nested, tmp_path):
    _randomize(nested, seed=1)
    path = str(tmp_path / "classifier.weights.h5")
    nested.save_weights(path)
    expected = [w.numpy() for w in nested.weights]
    _zero(nested)
    report = load_weights_by_name(nested, path)
    assert report.missing == report.mismatched == report.unused == []
    for v, x in zip(nested.weights, expected):
        np.testing.assert_array_equal(v.numpy(), x)


def _tiny_classifier(seed):
    inner_in = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inner_in)
    h = keras.layers.BatchNormalization()(h)
    inner = keras.Model(inner_in, h)
    x_in = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(x_in))
    model = keras.Model(x_in, keras.layers.Dense(3)(x))  # auto-named layers
    _randomize(model, seed)
    return model


@pytest.mark.parametrize("strip", [False, True])
def test_rebuilt_model_with_auto_names_loads_with_keras(strip, tmp_path):
    """A checkpoint of the same model rebuilt (auto-generated layer names differ: `dense_7`):
    `load_model_weights` hands it to Keras' own loader, which matches by save path."""
    first, second = _tiny_classifier(0), _tiny_classifier(1)
    assert layer_names_with_weights(first) != layer_names_with_weights(second)
    path = str(tmp_path / "tiny.weights.h5")
    first.save_weights(path)
    if strip:
        _strip_names(path, str(tmp_path / "stripped.weights.h5"))
        path = str(tmp_path / "stripped.weights.h5")
        assert load_weights_by_name(_tiny_classifier(2), path).matched_by == "position"
    else:  # the by-name loader goes by the recorded names, which are another model's
        with pytest.raises(WeightsMismatchError, match="not in the file"):
            load_weights_by_name(_tiny_classifier(2), path)
    load_model_weights(second, path)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoint_round_trips_exactly_with_optimizer_state(tmp_path):
    model = _tiny_classifier(0)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 8, 8, 3)), np.ones((4, 3)), epochs=1, verbose=0)
    path = tmp_path / "last.weights.h5"
    model.save_weights(path)
    again = _tiny_classifier(1)
    again.compile(optimizer="adam", loss="mse")
    again.optimizer.build(again.trainable_variables)
    load_checkpoint(again, path)
    for a, b in zip(model.weights + model.optimizer.variables,
                    again.weights + again.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(again.optimizer.iterations.numpy()) == 1
    # A model without a built optimizer (evaluation) takes the weights, quietly.
    fresh = _tiny_classifier(2)
    fresh.compile(optimizer="adam", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(fresh, path)
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoint_of_another_model_is_one_line_naming_the_file(tmp_path, capfd):
    path = str(tmp_path / "best.weights.h5")
    _tiny_classifier(0).save_weights(path)
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(6, 3)(inner_in))  # 6 filters, not 4
    x_in = keras.Input((8, 8, 3))
    other = keras.Model(x_in, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(
        inner(x_in))), name="other")
    with pytest.raises(WeightsMismatchError) as info:
        load_checkpoint(other, path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 700
    assert message.startswith(f"Checkpoint {path} does not fit model 'other' (a checkpoint of "
                              f"another config?): ")
    assert "(3, 3, 3, 6)" in message  # what did not fit
    assert "UserWarning" not in capfd.readouterr().err  # Keras' warnings about it are dropped
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load_checkpoint(other, tmp_path / "nope.weights.h5")
    bad = tmp_path / "cut.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(WeightsFileError, match="cut.weights.h5"):
        load_checkpoint(other, bad)


def test_model_weights_use_keras_for_the_same_structure_else_names_listing_unused(
        files, source, target, target_no_top, monkeypatch):
    """`load_model_weights`: a Keras 3 file of a structurally identical model goes to Keras' own
    loader; any other file by name, and the file's layers the model lacks are listed as unused
    (Keras' own loader would skip the top of a keras.applications file without a word)."""
    import mobilevision.backbones.weights as weights

    by_keras = []
    monkeypatch.setattr(weights, "load_checkpoint",
                        lambda model, path: by_keras.append(path) or load_checkpoint(model, path))
    for kind in ("weights_h5", "keras_zip", "legacy_keras2", "unnamed"):
        _zero(target)
        report = load_model_weights(target, files[kind])
        _assert_same_weights(source, target, layer_names_with_weights(target))
        assert report.loaded == layer_names_with_weights(target) and not report.fresh
        assert report.matched_by == ("name" if kind == "legacy_keras2" else "save_path")
    assert by_keras == [files["weights_h5"], files["keras_zip"], files["unnamed"]]
    _zero(target_no_top)
    report = load_model_weights(target_no_top, files["weights_h5"])
    assert report.unused == ["predictions"] and not report.fresh
    assert "1 of the file's layers unused" in report.summary()
    _assert_same_weights(source, target_no_top, layer_names_with_weights(target_no_top))
    assert len(by_keras) == 3


@pytest.fixture(scope="module")
def wrong_alpha_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("alpha") / "mnv2_0.5.weights.h5")
    _mobilenet(alpha=0.5).save_weights(path)
    return path


def test_wrong_alpha_raises_and_leaves_model_unchanged(wrong_alpha_file, target):
    _zero(target)
    with pytest.raises(WeightsMismatchError) as info:
        load_weights_by_name(target, wrong_alpha_file)
    message = str(info.value)
    assert wrong_alpha_file in message
    assert "block_1_project (model (1, 1, 48, 8), file (1, 1, 48, 16))" in message
    assert "... and 56 more" in message  # 76 mismatched layers, 20 listed
    report = info.value.report
    names = {m.name for m in report.mismatched}
    assert len(names) == 76
    assert {"block_1_project", "block_2_expand", "block_16_project_BN"} <= names
    assert "Conv1" not in names  # both alphas round to 16 filters there
    mm = next(m for m in report.mismatched if m.name == "block_2_expand")
    assert mm.expected == (1, 1, 8, 48) and mm.found == (1, 1, 16, 96)
    assert all(not np.any(v.numpy()) for v in target.weights)  # nothing assigned
    assert "Conv1" in report.loaded and "block_2_expand" not in report.loaded  # what did fit
    # The same file as `model.weights`: the same structure, but not the same shapes, so it is
    # not handed to Keras' own loader and the error lists the layers.
    with pytest.raises(WeightsMismatchError, match=r"block_1_project \(model \(1, 1, 48, 8\)"):
        load_model_weights(target, wrong_alpha_file)
    assert all(not np.any(v.numpy()) for v in target.weights)


def test_missing_layers_raise(files, nested, tmp_path):
    other = _classifier(nested.layers[1], classes=5, head_name="logits")
    with pytest.raises(WeightsMismatchError, match=r"not in the file: logits") as info:
        load_weights_by_name(other, files["weights_h5"])
    report = info.value.report
    assert report.missing == ["logits"] and report.unused == ["predictions"]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.weights.h5")
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load_weights_by_name(keras.Sequential(), path)


def test_not_hdf5(tmp_path, target):
    path = tmp_path / "notes.h5"
    path.write_text("not weights")
    with pytest.raises(WeightsFileError, match="notes.h5") as info:
        load_weights_by_name(target, str(path))
    assert isinstance(info.value, ValueError)


def test_hdf5_of_unknown_layout(tmp_path, target):
    path = str(tmp_path / "data.h5")
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WeightsFileError, match="data.h5"):
        load_weights_by_name(target, path)


# --------------------------------------------------------------------------------------------
# Fine-tuning: `load_model_weights` between task models of other classes and other tasks.
# Tiny models (alpha 0.35, 96 px) built as a user's config builds them.

TINY = ["model.input_size=[96,96]", "model.backbone.alpha=0.35"]
TASK_CONFIGS = {"detection": "shapes_ssdlite.yaml", "classification": "shapes_classifier.yaml",
                "segmentation": "shapes_deeplabv3.yaml"}


def _task_model(task, classes):
    import mobilevision as mv

    # shapes_deeplabv3 weighs its 6 classes; another class count needs weights of its own.
    extra = ["train.class_weights=null"] if task == "segmentation" else []
    cfg = mv.load_config(TASK_CONFIGS[task], TINY + extra + [f"model.num_classes={classes}"])
    return mv.build_model(cfg)


def _by_layer(model):
    """{weighted layer name: [arrays]} over the model, nested backbone included."""
    return {u.name: [np.array(v.numpy()) for v in u.variables] for u in _model_units(model)}


def _scoped(model, scope):
    return [u.name for u in _model_units(model) if u.scope == scope]


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """Source models with random weights (BatchNorm statistics included) saved with
    `save_weights`, and fresh targets: {key: (model, file or None)}."""
    d = tmp_path_factory.mktemp("tasks")
    out = {}
    for key, task, classes in [("det5", "detection", 5), ("cls5", "classification", 5),
                               ("seg6", "segmentation", 6)]:
        model = _task_model(task, classes)
        _randomize(model, seed=len(out))
        path = str(d / f"{key}.weights.h5")
        model.save_weights(path)
        out[key] = (model, path)
    for key, task, classes in [("det3", "detection", 3), ("cls3", "classification", 3),
                               ("seg3", "segmentation", 3)]:
        out[key] = (_task_model(task, classes), None)
    return out


def _check_load(task_models, source, target):
    """Load `source`'s file into `target`; check every loaded layer holds the file's values and
    every fresh layer its own initial values; return the report."""
    src_model, path = task_models[source]
    model = task_models[target][0]
    before, expected = _by_layer(model), _by_layer(src_model)
    report = load_model_weights(model, path)
    after = _by_layer(model)
    assert report.matched_by == "name" and report.model_layers == list(after)
    assert sorted(report.loaded + [n for n, _ in report.fresh]) == sorted(after)
    for name in report.loaded:
        for x, y in zip(after[name], expected[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name, _ in report.fresh:
        for x, y in zip(after[name], before[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    return report


def test_detector_into_detector_of_other_classes(task_models):
    report = _check_load(task_models, "det5", "det3")
    model = task_models["det3"][0]
    # Only the class predictors depend on the class count: (classes + 1) x anchors outputs.
    fresh = dict(report.fresh)
    assert list(fresh) == [f"ssd_class_{i}_conv" for i in range(len(model.decoder.map_sizes))]
    kernel = tuple(model.get_layer("ssd_class_0_conv").kernel.shape)
    anchors = kernel[-1] // 4
    assert fresh["ssd_class_0_conv"] == (f"shape {kernel} in the model, "
                                         f"{kernel[:-1] + (anchors * 6,)} in the file")
    assert report.unused == [] and report.missing == []
    assert set(_scoped(model, "mobilenet_v2")) <= set(report.loaded)
    assert {"ssd_box_0_conv", "ssd_extra_4_project_BN", "ssd_class_5_depthwise"} <= set(
        report.loaded)


def test_classifier_into_classifier_of_other_classes(task_models):
    report = _check_load(task_models, "cls5", "cls3")
    assert report.fresh == [("predictions", "shape (1280, 3) in the model, (1280, 5) in the file")]
    assert report.loaded == _scoped(task_models["cls3"][0], "mobilenet_v2")
    assert report.unused == []


def test_detector_into_classifier(task_models):
    report = _check_load(task_models, "det5", "cls3")
    assert report.loaded == _scoped(task_models["cls3"][0], "mobilenet_v2")
    assert report.fresh == [("predictions", "not in the file")]
    assert sorted(report.unused) == sorted(_scoped(task_models["det5"][0], ""))  # the SSD head


def test_detector_into_segmenter(task_models):
    report = _check_load(task_models, "det5", "seg3")
    seg = task_models["seg3"][0]
    # The segmenter's backbone stops at its tap, block_16_project: all of it comes from the
    # detector, whose layers after that are unused.
    det_backbone = _scoped(task_models["det5"][0], "mobilenet_v2")
    assert report.loaded == _scoped(seg, "mobilenet_v2") == det_backbone[:-3]
    assert det_backbone[-3:] == ["block_16_project_BN", "Conv_1", "Conv_1_bn"]
    assert [n for n, _ in report.fresh] == _scoped(seg, "")
    assert {r for _, r in report.fresh} == {"not in the file"}
    assert "logits" in dict(report.fresh) and "aspp0" in dict(report.fresh)
    assert sorted(report.unused) == sorted(det_backbone[-3:] + _scoped(task_models["det5"][0], ""))


def test_segmenter_into_detector(task_models):
    report = _check_load(task_models, "seg6", "det3")
    det = task_models["det3"][0]
    backbone = _scoped(det, "mobilenet_v2")
    # The segmenter's backbone ends at block_16_project: the detector's last three start fresh.
    assert report.loaded == backbone[:-3]
    assert [n for n, _ in report.fresh] == backbone[-3:] + _scoped(det, "")
    assert sorted(report.unused) == sorted(_scoped(task_models["seg6"][0], ""))


def test_classifier_into_detector(task_models):
    report = _check_load(task_models, "cls5", "det3")
    det = task_models["det3"][0]
    assert report.loaded == _scoped(det, "mobilenet_v2")
    assert [n for n, _ in report.fresh] == _scoped(det, "")
    assert report.unused == ["predictions"]


def test_same_classes_load_exactly_with_keras(task_models):
    model, path = task_models["det5"]
    expected = [np.array(v.numpy()) for v in model.weights]
    _zero(model)
    report = load_model_weights(model, path)
    assert report.matched_by == "save_path" and report.fresh == [] and report.unused == []
    assert report.loaded == layer_names_with_weights(model)
    for v, x in zip(model.weights, expected):
        np.testing.assert_array_equal(v.numpy(), x)


def test_report_lists_loaded_and_fresh_for_console_and_weights_json(task_models):
    model, path = task_models["det3"][0], task_models["det5"][1]
    report = load_model_weights(model, path)
    summary = report.summary()
    maps = len(model.decoder.map_sizes)  # a class predictor per map
    assert "\n" not in summary
    assert summary.startswith(f"loaded {len(report.model_layers) - maps} of "
                              f"{len(report.model_layers)} weighted layers from {path} (by layer "
                              f"name); {maps} started fresh: ssd_class_0_conv, ")
    text = report.describe()
    backbone = len(_scoped(model, "mobilenet_v2"))
    assert f"  loaded  mobilenet_v2: {backbone} of {backbone} layers" in text
    kernel = tuple(model.get_layer("ssd_class_5_conv").kernel.shape)  # 6 anchors x (3 + 1)
    assert kernel[-1] == 24
    assert (f"  fresh   ssd_class_5_conv  shape {kernel} in the model, {kernel[:-1] + (36,)} in "
            f"the file") in text.splitlines()
    import json

    data = json.loads(report.to_json())
    assert data["file"] == path and data["counts"] == {
        "layers": len(report.model_layers), "loaded": len(report.loaded), "fresh": maps,
        "unused": 0}
    entry = next(e for e in data["layers"] if e["layer"] == "ssd_class_5_conv")
    assert entry == {"layer": "ssd_class_5_conv", "in": "", "status": "fresh", "reason": "shape",
                     "model_shape": list(kernel), "file_shape": list(kernel[:-1]) + [36]}
    assert data["layers"][0] == {"layer": "Conv1", "in": "mobilenet_v2", "status": "loaded"}


def test_a_file_of_another_backbone_fits_nothing(task_models, tmp_path):
    v1 = keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                      input_shape=SHAPE)
    path = str(tmp_path / "mobilenet_v1.weights.h5")
    v1.save_weights(path)
    model = task_models["det3"][0]
    before = _by_layer(model)
    fits_nothing = r"^Weights file .* does not fit model 'mobilenet_v2_ssdlite': it fits nothing"
    with pytest.raises(WeightsMismatchError, match=fits_nothing) as info:
        load_model_weights(model, path)
    assert "conv_dw_1" in str(info.value) and "\n" not in str(info.value)
    assert info.value.report.loaded == []
    for name, arrays in _by_layer(model).items():
        for x, y in zip(arrays, before[name]):
            np.testing.assert_array_equal(x, y)


def test_a_file_of_another_width_is_another_backbone(task_models, tmp_path):
    import mobilevision as mv

    wider = mv.build_model(mv.load_config("shapes_classifier.yaml", [
        "model.input_size=[96,96]", "model.backbone.alpha=0.5", "model.num_classes=3"]))
    path = str(tmp_path / "cls_0.5.weights.h5")
    wider.save_weights(path)
    model = task_models["cls3"][0]
    before = _by_layer(model)
    another = (r"its backbone is another \(another width\?\), \d+ backbone layer\(s\) have "
               r"mismatched shapes: .*block_1_project \(model \(1, 1, 48, 8\), file "
               r"\(1, 1, 48, 16\)")
    with pytest.raises(WeightsMismatchError, match=another):
        load_model_weights(model, path)
    for name, arrays in _by_layer(model).items():
        for x, y in zip(arrays, before[name]):
            np.testing.assert_array_equal(x, y)


def test_run_folder_resolves_to_best_else_last_checkpoint(task_models, tmp_path):
    from mobilevision.backbones.weights import RUN_CHECKPOINTS, resolve_model_weights
    from mobilevision.tasks.trainer import BEST, LAST

    assert RUN_CHECKPOINTS == (f"checkpoints/{BEST}", f"checkpoints/{LAST}")
    run = tmp_path / "runs" / "det5"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"det5 is a folder without a checkpoint"):
        resolve_model_weights(run)
    shutil.copy(task_models["det5"][1], run / "checkpoints" / LAST)
    assert resolve_model_weights(run) == str(run / "checkpoints" / LAST)
    shutil.copy(task_models["cls5"][1], run / "checkpoints" / BEST)
    assert resolve_model_weights(run) == str(run / "checkpoints" / BEST)
    report = load_model_weights(task_models["det3"][0], run)  # the best: the classifier's
    assert report.path == str(run / "checkpoints" / BEST) and report.unused == ["predictions"]
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        resolve_model_weights(tmp_path / "nope.weights.h5")


def test_config_model_weights_takes_a_run_folder_and_names_its_checkpoint(task_models, tmp_path):
    from mobilevision.config import ConfigError, load_config

    run = tmp_path / "runs" / "shapes_ssdlite"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^override 'model\.weights=.*shapes_ssdlite': key "
                                          r"'model\.weights' names the folder '.*shapes_ssdlite', "
                                          r"which holds no checkpoint; expected a weights file or "
                                          r"a run folder holding checkpoints/best\.weights\.h5 or "
                                          r"checkpoints/last\.weights\.h5$"):
        load_config("shapes_ssdlite.yaml", [f"model.weights={run}"])
    shutil.copy(task_models["det5"][1], run / "checkpoints" / "last.weights.h5")
    cfg = load_config("shapes_ssdlite.yaml", [f"model.weights={run}"])
    # The resolved config (saved into the new run) names the very file used.
    assert cfg.model.weights == str(run / "checkpoints" / "last.weights.h5")
    with pytest.raises(ConfigError, match=r"key 'model\.weights' names '.*nope\.weights\.h5', "
                                          r"which is not a file; expected a weights file or a run "
                                          r"folder$"):
        load_config("shapes_ssdlite.yaml", [f"model.weights={tmp_path / 'nope.weights.h5'}"])
