"""Every task at every output stride, on a non-square input, as a user runs it: train a step,
evaluate, export to TFLite and evaluate the exported file, with the detector's anchors checked
against what its head returns. Models are small (alpha 0.35, 64 x 96 px) and the data tiny: this
checks that each combination works end to end, not what it learns (the demos do that)."""

import json

import numpy as np
import pytest

import mobilevision as mv
from mobilevision.cli import main
from mobilevision.tasks import get_task

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
        get_task(mv.load_config(config, _overrides(roots[task_name], 32))).prepare_data()
    return roots


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("task_name", list(CONFIGS))
def test_train_evaluate_export_at_output_stride(task_name, output_stride, data_roots, tmp_path,
                                                capsys):
    config = CONFIGS[task_name]
    overrides = _overrides(data_roots[task_name], output_stride)
    run = tmp_path / "run"
    assert main(["train", "--config", config, "--output", str(run), *overrides]) == 0
    keras_eval = json.loads((run / "eval.json").read_text())

    cfg = mv.load_config(config, overrides)
    task = get_task(cfg)
    model = task.build_model()
    if task_name == "detection":
        # Anchors come from the maps the head built; one row of outputs per anchor.
        anchors = task.anchors()
        out = model.predict_on_batch(np.zeros((1, *SIZE, 3), np.float32))
        assert out["boxes"].shape == (1, len(anchors), 4)
        assert out["classes"].shape == (1, len(anchors), cfg.model.num_classes + 1)
        maps = task.feature_maps()
        assert sum(m["anchors"] for m in maps) == len(anchors)
        # The taps sit at the output stride (block 13's expansion at min(16, OS)); the extra
        # layers halve the last tap's map.
        assert [m["size"] for m in maps][:2] == [[64 // min(16, output_stride), 96 // min(16, output_stride)],
                                                 [64 // output_stride, 96 // output_stride]]
        assert maps[2]["size"] == [-(-64 // output_stride // 2), -(-96 // output_stride // 2)]

    export = tmp_path / "export"
    assert main(["export", "--config", config, "--output", str(export), "--format", "tflite",
                 "--weights", str(run / "checkpoints" / "last.weights.h5"), *overrides]) == 0
    tflite = export / f"{cfg.name}.tflite"
    capsys.readouterr()
    assert main(["evaluate", "--config", config, "--model", str(tflite), *overrides]) == 0
    file_eval = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metric = {"classification": "top1", "detection": "AP50", "segmentation": "mIoU"}[task_name]
    assert np.isfinite(keras_eval[metric]) and np.isfinite(file_eval[metric])
    assert file_eval["num_examples"] == keras_eval["num_examples"] == 4
