"""Every task at every output stride, on a non-square input, as a user runs it: train a step,
evaluate, export to TFLite and evaluate the exported file, with the detector's anchors checked
against what its head returns. Models are small (alpha 0.35, 64 x 96 px) and the data tiny: this
checks that each combination works end to end, not what it learns (the demos do that)."""

import json

import numpy as np
import pytest

import mobilevision as mv
from mobilevision.api import Model
from mobilevision.data.shapes import prepare_data
from mobilevision.cli import main
from mobilevision.tasks import TASKS, build_model, training_dataset
from mobilevision.tasks.detection import feature_maps

CONFIGS = {"classification": "shapes_classifier.yaml", "detection": "shapes_ssdlite.yaml",
           "segmentation": "shapes_deeplabv3.yaml"}
SIZE = [64, 96]  # non-square: every map is 2 x 3 at stride 32


def _overrides(root, output_stride):
    return [f"data.root={root}", f"model.input_size={SIZE}".replace(" ", ""),
            f"model.backbone.output_stride={output_stride}", "model.backbone.alpha=0.35",
            "data.shapes.num_train=8", "data.shapes.num_val=4", "data.shapes.image_size=64",
            "train.batch_size=4", "train.epochs=1", "train.steps_per_epoch=1",
            "train.eval_every=1", "train.verbose=0"]


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    """One tiny shapes dataset per task, shared by the three output strides."""
    roots = {}
    for task_name, config in CONFIGS.items():
        roots[task_name] = tmp_path_factory.mktemp(f"os_{task_name}")
        prepare_data(mv.load_config(config, _overrides(roots[task_name], 32)))
    return roots


# The detector at OS 16 runs from the command line below.
CASES = [(t, s) for t in CONFIGS for s in (8, 16, 32) if (t, s) != ("detection", 16)]


@pytest.mark.parametrize("task_name, output_stride", CASES)
def test_train_evaluate_export_at_output_stride(task_name, output_stride, data_roots, tmp_path,
                                                capsys):
    """In process, as the commands do it: a train step, `evaluate`, TFLite export and the
    exported file scored by the same evaluation (`evaluate --model`)."""
    cfg = mv.load_config(CONFIGS[task_name], _overrides(data_roots[task_name], output_stride))
    model = build_model(cfg)
    TASKS[task_name].compile(model, cfg, 1)
    images, targets = next(iter(training_dataset(cfg, model)[0]))
    assert np.isfinite(model.train_on_batch(images, targets, return_dict=True)["loss"])
    if task_name == "detection":
        # Anchors come from the maps the head built; one row of outputs per anchor.
        anchors = model.decoder.anchors
        out = model(np.zeros((1, *SIZE, 3), np.float32))
        assert out["boxes"].shape == (1, len(anchors), 4)
        assert out["classes"].shape == (1, len(anchors), cfg.model.num_classes + 1)
        maps = feature_maps(cfg, model)
        assert sum(m["anchors"] for m in maps) == len(anchors)
        # The demo's taps sit at min(8, OS) (block 6's expansion), min(16, OS) (block 13's) and
        # OS (out_relu); the extras halve the last.
        strides = [min(8, output_stride), min(16, output_stride), output_stride]
        assert [m["size"] for m in maps[:4]] == [[64 // s, 96 // s] for s in strides] + [
            [-(-64 // output_stride // 2), -(-96 // output_stride // 2)]]
    metric = {"classification": "top1", "detection": "AP50", "segmentation": "mIoU"}[task_name]
    keras_model = Model.from_keras(model, cfg)
    # The segmenter's config evaluates at scales 1.0 and 1.5; a file has one input size, so it
    # runs at 1.0 (and says so): the Keras model is compared at 1.0 too.
    one_scale = {"scales": [1.0]} if task_name == "segmentation" else {}
    keras_eval = keras_model.evaluate("val", **one_scale)

    files = keras_model.export(["tflite"], tmp_path, log=lambda *a: None)
    capsys.readouterr()
    file_eval = mv.load(files["tflite"]).evaluate("val")
    if task_name == "segmentation":
        assert list(cfg.eval.scales) == [1.0, 1.5] and file_eval["scales"] == [1.0]
        assert "note: an exported model has one input size" in capsys.readouterr().err
    assert file_eval["num_examples"] == keras_eval["num_examples"] == 4
    assert np.isfinite(keras_eval[metric]) and np.isfinite(file_eval[metric])
    if task_name != "detection":  # a float32 file answers as the model (NMS kernels differ)
        assert file_eval[metric] == pytest.approx(keras_eval[metric], abs=1e-3)


def test_detector_at_output_stride_16_from_the_command_line(data_roots, tmp_path, capsys):
    """The command that crashed inside TensorFlow (anchors for strides 16/32, maps at 16/16):
    train, evaluate, export and evaluate --model, with the anchors checked against the head."""
    overrides = _overrides(data_roots["detection"], 16)
    cfg = mv.load_config("shapes_ssdlite.yaml", overrides)
    model = build_model(cfg)
    assert [m["size"] for m in feature_maps(cfg, model)] == [[8, 12], [4, 6], [4, 6], [2, 3],
                                                             [1, 2], [1, 1], [1, 1]]
    assert len(model.decoder.anchors) == 3 * 96 + 6 * (24 + 24 + 6 + 2 + 1 + 1)
    run = tmp_path / "run"
    args = ["--config", "shapes_ssdlite.yaml", *overrides]
    assert main(["train", "--output", str(run), *args]) == 0
    assert json.loads((run / "eval.json").read_text())["num_examples"] == 4
    assert main(["evaluate", "--output", str(run), *args]) == 0
    assert main(["export", "--output", str(tmp_path / "export"), "--format", "tflite",
                 "--weights", str(run / "checkpoints" / "last.weights.h5"), *args]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "export" / "shapes_ssdlite.tflite"),
                 *args]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_examples"] == 4
