"""Export: every task's model written as SavedModel and TFLite (float32, float16, int8) gives the
Keras model's answers on the same images, holds only ops apps can run, and is scored by
`evaluate --model` with the task's own metrics. (ONNX: test_onnx.py; metadata: test_metadata.py;
trained-model parity: the demo tests.)"""

import json
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from mobilevision.cli import main
from mobilevision.config import load_config
from mobilevision.export import FORMATS, export_model, parse_formats
from mobilevision.export.formats import ExportError, formats_markdown
from mobilevision.export.runtime import load_exported
from mobilevision.export.tflite import calibration_images, op_names
from mobilevision.ops.boxes import pairwise_iou
from mobilevision.tasks import get_task

# name -> (config, input size, shapes layout); small models (alpha 0.35).
CASES = {
    "classification": ("shapes_classifier.yaml", 64),
    "detection": ("shapes_ssdlite.yaml", 96),
    "segmentation": ("shapes_deeplabv3.yaml", 64),
}
TFLITE = ("tflite", "tflite_fp16", "tflite_int8")
ROOT = Path(__file__).resolve().parents[2]


def _config(name, root, *extra):
    config, size = CASES[name]
    return load_config(config, [
        "model.backbone.alpha=0.35", f"model.input_size=[{size},{size}]", f"data.root={root}",
        "data.shapes.num_train=12", "data.shapes.num_val=4", f"data.shapes.image_size={size}",
        "train.batch_size=4", "eval.scales=[1.0]", "eval.flip=false", *extra])


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory, randomize_batchnorm):
    """-> (task, Keras model, {format: path}, images (2, H, W, 3) float32 0..255): each task's
    model with random BatchNorm statistics exported once in every TensorFlow format."""
    name = request.param
    root = tmp_path_factory.mktemp(f"export_{name}")
    cfg = _config(name, root / "data")
    task = get_task(cfg)
    task.prepare_data()
    # Seeded, so the random model (and how near its scores tie) does not depend on which tests
    # ran before in this process.
    keras.utils.set_random_seed(3)
    model = task.build_model()
    task.compile(model, steps_per_epoch=1)  # Keras evaluation needs the task's metrics
    randomize_batchnorm(model, (*cfg.model.input_size, 3), seed=3)
    records = export_model(task, model, ["saved_model", *TFLITE], root / "out",
                           calibration_images=12, log=lambda *a: None)
    paths = {r["format"]: r["path"] for r in records}
    images = np.random.default_rng(1).uniform(0, 255, (2, *cfg.model.input_size, 3))
    return task, model, paths, np.round(images).astype(np.float32)


def _detections(task, outputs, i):
    d = task.postprocess(outputs)
    c = int(d["count"][i])
    return d["boxes"][i, :c], d["scores"][i, :c], d["classes"][i, :c]


def _assert_same_detections(task, want, got, atol, min_iou, top=10):
    """The `top` best Keras detections of each image are found in `got`: same class, IoU above
    min_iou, score within atol."""
    for i in range(2):
        wb, ws, wl = _detections(task, want, i)
        gb, gs, gl = _detections(task, got, i)
        assert len(wb) > 0
        iou = pairwise_iou(wb[:top], gb) if len(gb) else np.zeros((min(top, len(wb)), 0))
        for j in range(min(top, len(wb))):
            same = (gl == wl[j]) & (iou[j] > min_iou) & (np.abs(gs - ws[j]) <= atol)
            assert same.any(), f"image {i}: Keras detection {j} (class {wl[j]}, score {ws[j]:.4f})"


@pytest.mark.parametrize("fmt, atol, min_iou", [("saved_model", 1e-5, 0.999),
                                                 ("tflite", 1e-4, 0.999),
                                                 ("tflite_fp16", 2e-2, 0.95)])
def test_float_files_give_the_keras_outputs(exported, fmt, atol, min_iou):
    task, model, paths, images = exported
    runner = load_exported(paths[fmt], task)
    want, got = model.predict_on_batch(images), runner.predict_on_batch(images)
    if task.name == "detection":
        _assert_same_detections(task, want, got, atol, min_iou)
    elif task.name == "segmentation":  # the runner returns log-probabilities
        e = np.exp(want - want.max(-1, keepdims=True))
        np.testing.assert_allclose(np.exp(got), e / e.sum(-1, keepdims=True), atol=atol)
    else:
        np.testing.assert_allclose(got, want, atol=atol)


def test_int8_file_is_integer_and_close_to_keras(exported):
    """Full-integer: the input is uint8 holding the pixels themselves (scale 1, zero point 0),
    every convolution is int8, and the answers stay close on a random model (the metric deltas
    on trained models are in the demo tests)."""
    task, model, paths, images = exported
    runner = load_exported(paths["tflite_int8"], task)
    detail = runner.interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (1.0, 0)
    from ai_edge_litert import schema_py_generated as schema

    data = open(paths["tflite_int8"], "rb").read()
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = op_names(data)[op.OpcodeIndex()]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert graph.Tensors(op.Inputs(1)).Type() == schema.TensorType.INT8, name
    want, got = model.predict_on_batch(images), runner.predict_on_batch(images)
    if task.name == "classification":
        assert np.abs(got - want).max() < 0.1
    elif task.name == "segmentation":
        assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9
    else:
        # A random detector's class scores nearly tie, so int8 error may swap classes or order
        # (class parity on a trained detector: the demo test's AP delta). Its boxes and the
        # spread of its scores must hold.
        for i in range(2):
            wb, ws, _ = _detections(task, want, i)
            gb, gs, _ = _detections(task, got, i)
            assert np.abs(np.sort(gs)[::-1][:10] - ws[:10]).max() < 0.05
            assert (pairwise_iou(wb[:5], gb).max(1) > 0.8).all()


def test_tflite_files_hold_only_ops_apps_can_run(exported):
    task, model, paths, _ = exported
    for fmt in TFLITE:
        names = set(op_names(open(paths[fmt], "rb").read()))
        assert not [n for n in names if n.startswith("Flex")]
        assert ("TFLite_Detection_PostProcess" in names) == (task.name == "detection")


def test_saved_model_uint8_signature_equals_float(exported):
    import tensorflow as tf

    task, model, paths, images = exported
    loaded = tf.saved_model.load(paths["saved_model"])
    a = loaded.signatures["serving_default"](images=tf.constant(images.astype(np.uint8)))
    b = loaded.signatures["serving_float"](images=tf.constant(images))
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6)
    if task.name == "detection":
        assert set(a) == {"boxes", "classes", "scores", "count"}


@pytest.mark.parametrize("fmt", ["saved_model", "tflite"])
def test_evaluate_scores_an_exported_file_like_keras(exported, fmt, tmp_path):
    """`evaluate --model` runs the task's metrics on the file; on the same split every metric
    equals the Keras model's (float32 files)."""
    task, model, paths, _ = exported
    want = task.evaluate(model, task.cfg.data.val_split)
    code = main(["evaluate", "--config", task.cfg["_source"], "--model", paths[fmt],
                 "--output", str(tmp_path), *_overrides(task)])
    assert code == 0
    got = json.loads((tmp_path / f"{Path(paths[fmt]).name}.eval.json").read_text())
    assert got["model"] == paths[fmt]
    metrics = [k for k, v in want.items() if isinstance(v, float) and k != "loss"]
    assert task.monitor in metrics
    for key in metrics:
        assert abs(got[key] - want[key]) < 0.005, key
    if task.name == "segmentation":  # a file has one input size: no multi-scale evaluation
        from mobilevision.config import ConfigError

        with pytest.raises(ConfigError, match=r"one input size.*eval.scales=\[1.0\]"):
            task.evaluate(load_exported(paths["tflite"], task), "val", scales=[1.0, 1.5])


def _overrides(task):
    """The overrides that rebuild `task`'s config through the command line."""
    cfg = task.cfg
    size = cfg.model.input_size[0]
    return ["model.backbone.alpha=0.35", f"model.input_size=[{size},{size}]",
            f"data.root={cfg.data.root}", "data.shapes.num_train=12", "data.shapes.num_val=4",
            f"data.shapes.image_size={size}", "train.batch_size=4", "eval.scales=[1.0]",
            "eval.flip=false"]


def test_formats_table_drives_choices_errors_and_readme():
    readme = (ROOT / "README.md").read_text()
    assert formats_markdown() in readme
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("tflite, onnx") == ["tflite", "onnx"]
    with pytest.raises(ExportError, match="unknown export format.*saved_model, tflite"):
        parse_formats("tflite_int4")


def test_export_command_refuses_bad_requests(tmp_path, capsys):
    root = tmp_path / "data"
    base = ["export", "--config", "shapes_classifier.yaml", "--output", str(tmp_path / "out")]
    assert main([*base, "--format", "tflite_int4", "--weights", __file__, f"data.root={root}"]) == 2
    assert "unknown export format" in capsys.readouterr().err
    assert main([*base, "--format", "tflite", "--weights", str(tmp_path / "none.h5"),
                 f"data.root={root}"]) == 2
    assert "no such file" in capsys.readouterr().err
    # No checkpoint anywhere: exporting untrained weights is refused.
    assert main([*base, "--format", "tflite", f"data.root={root}", f"output={tmp_path / 'run'}"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_options_for_formats_not_asked_are_refused(tmp_path):
    cfg = _config("classification", tmp_path / "data")
    task = get_task(cfg)
    with pytest.raises(ExportError, match="--calibration-images applies to tflite_int8 only"):
        export_model(task, None, ["tflite"], tmp_path, calibration_images=10)
    with pytest.raises(ExportError, match="--nms applies to tflite, tflite_fp16, tflite_int8"):
        export_model(task, None, ["onnx"], tmp_path, nms="fast")
    with pytest.raises(ExportError, match="--nms applies to detection models only"):
        export_model(task, None, ["tflite"], tmp_path, nms="fast")
    with pytest.raises(ExportError, match="--calibration-images 0: give at least 1"):
        export_model(task, None, ["tflite_int8"], tmp_path, calibration_images=0)


def test_a_file_of_another_task_is_refused_by_name(exported, tmp_path, capsys):
    """evaluate --model with a file that is not the config's task, or not a model at all: a
    one-line error naming the file, exit 2."""
    task, _, paths, _ = exported
    other = {"classification": "segmentation", "segmentation": "classification",
             "detection": "classification"}[task.name]
    cfg = _config(other, tmp_path / "data")  # 64 px: the segmenter's or classifier's size
    if tuple(cfg.model.input_size) == tuple(task.cfg.model.input_size):
        with pytest.raises(ExportError, match="was it exported for another task"):
            load_exported(paths["tflite"], get_task(cfg))
    else:
        with pytest.raises(ExportError, match="input is .* model.input_size"):
            load_exported(paths["tflite"], get_task(cfg))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    assert main(["evaluate", "--config", task.cfg["_source"], "--model", str(junk),
                 *_overrides(task)]) == 2
    assert f"--model {junk}: cannot load it" in capsys.readouterr().err


MEDIAPIPE = os.environ.get("MOBILEVISION_MEDIAPIPE_PYTHON")


@pytest.mark.skipif(not MEDIAPIPE, reason="MediaPipe lives in a venv of its own: set "
                    "MOBILEVISION_MEDIAPIPE_PYTHON to its python (.ci/run does)")
@pytest.mark.parametrize("fmt", ["tflite", "tflite_int8"])
def test_mediapipe_tasks_load_the_files_and_agree_with_litert(exported, fmt, tmp_path):
    """The exported files as they are (metadata from the exporter) in MediaPipe Tasks'
    ObjectDetector / ImageClassifier / ImageSegmenter, on training images (the small val split
    here lacks a class, which a split that defines the classes may not): the results equal
    LiteRT's (benchmarks/mediapipe_check.py)."""
    from PIL import Image

    task, _, paths, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    calibration = calibration_images(task, 4)
    for i, image in enumerate(calibration):
        Image.fromarray(np.round(image).astype(np.uint8)).save(folder / f"{i}.png")
    labels = Path(paths[fmt]).parent / "labels.txt"
    done = subprocess.run([MEDIAPIPE, str(ROOT / "benchmarks" / "mediapipe_check.py"),
                           "--task", task.name, "--model", paths[fmt], "--images", str(folder),
                           "--labels", str(labels)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_int8_file_can_take_float_input(tmp_path, randomize_batchnorm):
    """--input-type float32: an int8 file that takes float pixels (quantized inside) and answers
    as the Keras model does, within int8 error."""
    from mobilevision.export.tflite import convert_tflite

    cfg = _config("classification", tmp_path / "data")
    task = get_task(cfg)
    task.prepare_data()
    model = task.build_model()
    randomize_batchnorm(model, (*cfg.model.input_size, 3), seed=5)
    images = calibration_images(task, 8)
    path = tmp_path / "float_in.tflite"
    path.write_bytes(convert_tflite(task, model, "int8", calibration=images, input_type="float32"))
    runner = load_exported(path, task)
    assert runner.input_dtype == np.float32
    x = images[:2] + 0.25  # not integers: the float input is used as it is
    assert np.abs(runner.predict_on_batch(x) - model.predict_on_batch(x)).max() < 0.1


def test_fast_nms_keeps_one_class_per_box(tmp_path, randomize_batchnorm):
    """--nms fast: TFLite_Detection_PostProcess's class-agnostic NMS, so no two kept boxes
    overlap beyond the IoU threshold whatever their classes; the best detection is the one
    regular NMS ranks first."""
    from mobilevision.export.tflite import convert_tflite

    cfg = _config("detection", tmp_path / "data")
    task = get_task(cfg)
    task.prepare_data()
    model = task.build_model()
    randomize_batchnorm(model, (*cfg.model.input_size, 3), seed=5)
    path = tmp_path / "fast.tflite"
    path.write_bytes(convert_tflite(task, model, "float32", nms="fast"))
    x = np.round(calibration_images(task, 2))
    runner = load_exported(path, task)
    regular = task.postprocess(model.predict_on_batch(x))
    for i in range(2):
        fast = runner.raw(x[i:i + 1])  # the file's own outputs, before from_exported clips them
        n = int(fast["count"][0])
        boxes = fast["boxes"][0, :n]
        assert n > 1
        assert pairwise_iou(boxes, boxes)[np.triu_indices(n, 1)].max() <= cfg.model.head.nms_iou + 1e-5
        assert int(fast["classes"][0, 0]) == regular["classes"][i, 0]
        assert abs(fast["scores"][0, 0] - regular["scores"][i, 0]) < 1e-4


def test_export_from_a_run_folder_needs_no_dataset(tmp_path, capsys):
    """A run copied to another machine exports float formats from its checkpoint and
    labels.txt alone; the labels packed into the file are the run's."""
    from mobilevision.export.metadata import associated_files

    cfg = _config("classification", tmp_path / "no_data_here")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    get_task(cfg).build_model().save_weights(run / "checkpoints" / "best.weights.h5")
    names = ["disc", "box", "tri", "star", "hex"]
    (run / "labels.txt").write_text("\n".join(names) + "\n")
    code = main(["export", "--config", "shapes_classifier.yaml", "--format", "tflite",
                 *_overrides(get_task(cfg)), f"output={run}"])
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "no_data_here").exists()
    data = (run / "export" / "shapes_classifier.tflite").read_bytes()
    assert associated_files(data)["labels.txt"].split() == names
    # A run whose labels disagree with the config is refused, naming the file.
    (run / "labels.txt").write_text("a\nb\n")
    assert main(["export", "--config", "shapes_classifier.yaml", "--format", "tflite",
                 *_overrides(get_task(cfg)), f"output={run}"]) == 2
    assert "labels.txt: 2 class names, but model.num_classes is 5" in capsys.readouterr().err


def test_predict_runs_an_exported_file(exported, tmp_path):
    """`predict --model FILE` annotates images with the file's answers, class names from the
    labels.txt the export wrote beside it; the same as the Keras model's predictions."""
    from PIL import Image

    task, model, paths, images = exported
    Image.fromarray(images[0].astype(np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", "--config", task.cfg["_source"], "--model", paths["tflite"],
                 "--input", str(tmp_path / "a.png"), "--output", str(out),
                 *_overrides(task)]) == 0
    got = json.loads((out / "predictions.json").read_text())[0]
    want, _ = task.predict_image(model, np.asarray(Image.open(tmp_path / "a.png")),
                                 task.class_names)
    assert got["file"] == str(tmp_path / "a.png")
    if task.name == "classification":  # the same score for each class (order may tie)
        scores = {p["class"]: p["score"] for p in got["predictions"]}
        for p in want["predictions"]:
            assert abs(scores[p["class"]] - p["score"]) < 1e-3, p
    elif task.name == "detection":  # each of Keras's best five is among the file's
        for d in want["detections"][:5]:
            assert any(g["class"] == d["class"] and abs(g["score"] - d["score"]) < 1e-3 and
                       np.allclose(g["bbox"], d["bbox"], atol=0.5) for g in got["detections"]), d
    else:  # the fraction of pixels of each class
        assert set(got["classes"]) == set(want["classes"])
        for name, fraction in want["classes"].items():
            assert abs(got["classes"][name] - fraction) < 0.01, name
