"""TFLite Metadata: what add_metadata writes, read back; output order = the subgraph's; the packed
label file; the file still runs unchanged in LiteRT; errors; and (with MediaPipe in a venv of its
own, named by MOBILEVISION_MEDIAPIPE_PYTHON) MediaPipe Tasks against LiteRT.

The models are tiny TensorFlow functions with the export signatures (16x16 input, the detector
ending in the real TFLite_Detection_PostProcess of `serving.detection_postprocess_fn`), converted
through a SavedModel as `convert_tflite` does, so the file layout is the converter's own in well
under a second per file.
"""

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobilevision.export import metadata as md
from mobilevision.export.formats import ExportError
from mobilevision.export.metadata import add_metadata, read_metadata

SIZE = 16
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
LABELS = {"classification": SHAPES, "detection": SHAPES, "segmentation": ["background", *SHAPES]}
ROOT = Path(__file__).resolve().parents[2]


def _convert(fn, tmp, quantize=False, custom=False) -> bytes:
    import tensorflow as tf

    module = tf.Module()
    module.fn = fn
    spec = tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")
    tf.saved_model.save(module, str(tmp), signatures={"serving_default":
                                                      fn.get_concrete_function(spec)})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp))
    converter.allow_custom_ops = custom
    if quantize:  # full integer, uint8 pixels in (scale 1, zero point 0), float32 out
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [np.full((1, SIZE, SIZE, 3), v, np.float32)] for v in (0.0, 100.0, 255.0))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(task, "float32" | "int8"): TFLite bytes without metadata}."""
    import tensorflow as tf

    from mobilevision.config import load_config
    from mobilevision.export.serving import detection_postprocess_fn

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(0, 0.02, (3, 3, 3, 6)).astype(np.float32))

    @tf.function
    def classify(image):
        logits = tf.reduce_mean(tf.nn.conv2d(image, kernel, 1, "SAME"), [1, 2])[:, :5]
        return {"probabilities": tf.nn.softmax(logits)}

    @tf.function
    def segment(image):
        return {"scores": tf.nn.softmax(tf.nn.conv2d(image, kernel, 1, "SAME"), axis=-1)}

    from mobilevision.tasks.detection import SSDDecoder

    h = load_config("shapes_ssdlite.yaml").model.head  # the demo detector's NMS settings
    decoder = SSDDecoder(np.zeros((1, 4)), "softmax", h.nms_iou, h.score_threshold,
                         h.max_detections)
    postprocess = detection_postprocess_fn(decoder, num_classes=len(SHAPES))
    grid = (np.arange(SIZE // 4) + 0.5) / (SIZE // 4)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    anchors = np.stack([yy.ravel(), xx.ravel(), np.full(yy.size, 0.4), np.full(yy.size, 0.4)],
                       axis=1).astype(np.float32)  # (ycenter, xcenter, h, w)
    head = tf.constant(rng.normal(0, 0.05, (4, 4, 3, 4 + 6)).astype(np.float32))

    @tf.function
    def detect(image):
        out = tf.reshape(tf.nn.conv2d(image / 255.0, head, 4, "VALID"), [1, len(anchors), 10])
        boxes, classes, scores, count = postprocess(out[..., :4], tf.nn.softmax(out[..., 4:]),
                                                    tf.constant(anchors))
        return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}

    out = {}
    for task, fn in (("classification", classify), ("segmentation", segment),
                     ("detection", detect)):
        for q in ("float32", "int8"):
            out[task, q] = _convert(fn, tmp_path_factory.mktemp(f"{task}_{q}"), q == "int8",
                                    custom=task == "detection")
    return out


def _with_metadata(models, task, q="float32", **kw):
    return add_metadata(models[task, q], task=task, labels=LABELS[task], name=f"tiny {task}", **kw)


def _run_litert(data: bytes, image: np.ndarray) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    return runner(**{name: image.astype(detail["dtype"])})


# Round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", ["float32", "int8"])
def test_classification_round_trip(models, q):
    meta = read_metadata(_with_metadata(models, "classification", q, description="d",
                                        version="1.2", license="Apache-2.0"))
    assert (meta["name"], meta["description"], meta["version"], meta["author"],
            meta["license"]) == ("tiny classification", "d", "1.2", "mobilevision", "Apache-2.0")
    assert meta["min_parser_version"] == "1.0.0"
    (image,) = meta["inputs"]
    assert image["content"] == "ImageProperties" and image["color_space"] == "RGB"
    assert image["default_size"] == [SIZE, SIZE]
    # MediaPipe feeds (pixel - mean) / std: mean 0, std 1 = the raw 0..255 pixels the file takes.
    assert image["normalization"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert image["stats"] == {"min": [0.0] * 3, "max": [255.0] * 3}
    (probs,) = meta["outputs"]
    assert probs["name"] == "probabilities" and meta["signature_outputs"] == ["probabilities"]
    assert probs["associated_files"][0]["name"] == "labels.txt"
    assert probs["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert meta["associated_files"] == {"labels.txt": "".join(f"{x}\n" for x in SHAPES)}


def test_detection_round_trip(models):
    meta = read_metadata(_with_metadata(models, "detection"))
    by_name = {o["name"]: o for o in meta["outputs"]}
    assert sorted(by_name) == ["category", "location", "number of detections", "score"]
    # [ymin, xmin, ymax, xmax]: left, top, right, bottom sit at 1, 0, 3, 2.
    assert by_name["location"]["bounding_box"] == {"index": [1, 0, 3, 2], "type": "BOUNDARIES",
                                                   "coordinate_type": "RATIO"}
    assert by_name["location"]["range"] == [2, 2]
    assert by_name["category"]["associated_files"][0]["type"] == "TENSOR_VALUE_LABELS"
    assert meta["output_tensor_groups"] == [{"name": "detection_result",
                                             "tensor_names": ["location", "category", "score"]}]
    assert meta["min_parser_version"] == "1.2.0"  # TensorGroup
    assert meta["associated_files"]["labels.txt"].splitlines() == SHAPES


def test_segmentation_round_trip(models):
    meta = read_metadata(_with_metadata(models, "segmentation", "int8"))
    (scores,) = meta["outputs"]
    assert scores["name"] == "scores" and scores["range"] == [1, 2]
    assert scores["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    # The scores are softmax probabilities already: MediaPipe must apply no activation.
    assert meta["custom_metadata"] == {
        "SEGMENTER_METADATA": {"activation": "NONE", "min_parser_version": "1.0.0"}}
    assert meta["min_parser_version"] == "1.5.0"  # CustomMetadata
    assert meta["inputs"][0]["description"].startswith("RGB image, uint8")
    assert meta["associated_files"]["labels.txt"].splitlines() == LABELS["segmentation"]


def test_output_metadata_follow_the_subgraph_order(models):
    """The converter orders the detector's outputs its own way (once [classes, count, boxes,
    scores]); metadata must follow that order, not the signature's."""
    model = md._read_model(models["detection", "float32"])
    names = {md._text(o.name): o.tensorIndex for o in model.signatureDefs[0].outputs}
    for order in (["classes", "count", "boxes", "scores"], ["scores", "boxes", "count", "classes"]):
        model.subgraphs[0].outputs = [names[n] for n in order]
        meta = read_metadata(add_metadata(md._write_model(model), task="detection",
                                          labels=SHAPES, name="permuted"))
        assert meta["signature_outputs"] == order
        expected = {"boxes": "location", "classes": "category", "scores": "score",
                    "count": "number of detections"}
        assert [o["name"] for o in meta["outputs"]] == [expected[n] for n in order]


def test_labels_zip_is_stored_uncompressed_after_the_model(models):
    data = _with_metadata(models, "classification")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (info,) = zf.infolist()
        # MediaPipe reads associated files in place and refuses compressed ones.
        assert info.filename == "labels.txt" and info.compress_type == zipfile.ZIP_STORED
        assert zf.read(info).decode().splitlines() == SHAPES
    assert data[4:8] == b"TFL3"


def test_adding_twice_replaces_metadata_and_labels(models):
    first = _with_metadata(models, "classification")
    again = add_metadata(first, task="classification", labels=[x.upper() for x in SHAPES],
                         name="again")
    from ai_edge_litert import schema_py_generated as tfl

    root = tfl.Model.GetRootAs(again, 0)
    names = [root.Metadata(i).Name() for i in range(root.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    assert b"min_runtime_version" in names  # the converter's entries are kept
    meta = read_metadata(again)
    assert meta["name"] == "again"
    assert meta["associated_files"] == {"labels.txt": "".join(f"{x.upper()}\n" for x in SHAPES)}
    assert add_metadata(first, task="classification", labels=SHAPES, name="tiny classification") \
        == first  # deterministic bytes


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_file_with_metadata_runs_unchanged(models, task):
    image = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).round()
    for q in ("float32", "int8"):
        before = _run_litert(models[task, q], image)
        after = _run_litert(_with_metadata(models, task, q), image)
        assert sorted(before) == sorted(after)
        for k in before:
            np.testing.assert_array_equal(before[k], after[k])


def test_buffers_stay_16_byte_aligned(models):
    from ai_edge_litert import schema_py_generated as tfl

    data = _with_metadata(models, "segmentation")
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    root = tfl.Model.GetRootAs(data, 0)
    for i in range(root.BuffersLength()):
        if root.Buffers(i).DataLength():
            start = root.Buffers(i).DataAsNumpy().__array_interface__["data"][0] - base
            assert start % 16 == 0, (i, start)


def test_min_parser_version_takes_the_newest_field():
    from mobilevision.export.schema import metadata_schema_generated as fb

    meta = fb.ModelMetadataT()
    assert md.min_parser_version(meta) == "1.0.0"
    sub = fb.SubGraphMetadataT()
    tensor = fb.TensorMetadataT()
    tensor.associatedFiles = [fb.AssociatedFileT()]
    sub.outputTensorMetadata = [tensor]
    meta.subgraphMetadata = [sub]
    assert md.min_parser_version(meta) == "1.0.0"
    tensor.associatedFiles[0].type = fb.AssociatedFileType.VOCABULARY
    assert md.min_parser_version(meta) == "1.0.1"
    tensor.associatedFiles[0].version = "2"
    assert md.min_parser_version(meta) == "1.4.1"
    sub.customMetadata = [fb.CustomMetadataT()]
    assert md.min_parser_version(meta) == "1.5.0"


# Errors ----------------------------------------------------------------------------------------


def test_outputs_of_another_task_are_refused(models):
    with pytest.raises(ValueError, match=r"signature outputs \['probabilities'\].*detection "
                                         r"outputs \['boxes', 'classes', 'count', 'scores'\]"):
        add_metadata(models["classification", "float32"], task="detection", labels=SHAPES,
                     name="x")
    with pytest.raises(ExportError, match=r"\['scores'\].*\['probabilities'\]"):
        add_metadata(models["segmentation", "float32"], task="classification", labels=SHAPES,
                     name="x")


def test_bad_labels_and_tasks_are_refused(models):
    cls = models["classification", "float32"]
    with pytest.raises(ValueError, match="4 labels for a model with 5 classes"):
        add_metadata(cls, task="classification", labels=SHAPES[:4], name="x")
    with pytest.raises(ValueError, match="6 labels .* 5 classes .*num_classes"):
        add_metadata(models["detection", "float32"], task="detection",
                     labels=LABELS["segmentation"], name="x")
    with pytest.raises(ValueError, match="one non-blank line"):
        add_metadata(cls, task="classification", labels=["a", "b\nc", "d", "e", "f"], name="x")
    with pytest.raises(ValueError, match="non-empty list"):
        add_metadata(cls, task="classification", labels=[], name="x")
    with pytest.raises(ValueError, match="task 'pose'"):
        add_metadata(cls, task="pose", labels=SHAPES, name="x")


def test_bad_files_are_refused(models):
    with pytest.raises(ValueError, match="not a TFLite file"):
        add_metadata(b"\0" * 64, task="classification", labels=SHAPES, name="x")
    with pytest.raises(ValueError, match="no TFLITE_METADATA"):
        read_metadata(models["classification", "float32"])
    # uint8 pixels quantized with another scale would reach the model wrong through MediaPipe.
    model = md._read_model(models["classification", "int8"])
    sub = model.subgraphs[0]
    sub.tensors[sub.inputs[0]].quantization.scale = np.array([0.5], np.float32)
    with pytest.raises(ValueError, match="scale 0.5.*scale 1, zero point 0"):
        add_metadata(md._write_model(model), task="classification", labels=SHAPES, name="x")


# MediaPipe -------------------------------------------------------------------------------------

MEDIAPIPE_PYTHON = os.environ.get("MOBILEVISION_MEDIAPIPE_PYTHON")
needs_mediapipe = pytest.mark.skipif(
    not MEDIAPIPE_PYTHON,
    reason="MOBILEVISION_MEDIAPIPE_PYTHON is not set: the python of a venv with mediapipe, "
           "ai-edge-litert and pillow (mediapipe's opencv-contrib clashes with ours)")


def _mediapipe_check(tmp_path, task, data, name) -> subprocess.CompletedProcess:
    from PIL import Image

    model = tmp_path / f"{name}.tflite"
    model.write_bytes(data)
    images = tmp_path / "images"
    if not images.exists():
        images.mkdir()
        rng = np.random.default_rng(2)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)).save(
                images / f"{i}.png")
    return subprocess.run(
        [MEDIAPIPE_PYTHON, str(ROOT / "benchmarks" / "mediapipe_check.py"), "--task", task,
         "--model", str(model), "--images", str(images)],
        capture_output=True, text=True, timeout=120)


@needs_mediapipe
@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
@pytest.mark.parametrize("q", ["float32", "int8"])
def test_mediapipe_matches_litert(models, tmp_path, task, q):
    run = _mediapipe_check(tmp_path, task, _with_metadata(models, task, q), f"{task}_{q}")
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "OK: MediaPipe and LiteRT agree" in run.stdout


@needs_mediapipe
def test_mediapipe_check_fails_on_wrong_metadata(models, tmp_path, monkeypatch):
    """Scores and classes named the other way round: the check must see it."""
    plain = md.output_order

    def swapped(model, task):
        order = plain(model, task)
        i, j = order.index("classes"), order.index("scores")
        order[i], order[j] = order[j], order[i]
        return order

    monkeypatch.setattr(md, "output_order", swapped)
    run = _mediapipe_check(tmp_path, "detection", _with_metadata(models, "detection"), "swapped")
    assert run.returncode == 1, run.stdout + run.stderr[-2000:]
    run = _mediapipe_check(tmp_path, "detection", models["detection", "float32"], "no_metadata")
    assert run.returncode == 2 and "MediaPipe refused" in run.stderr


def test_mediapipe_check_imports_neither_tensorflow_nor_mobilevision():
    """The check runs in MediaPipe's venv, which has neither."""
    import ast

    tree = ast.parse((ROOT / "benchmarks" / "mediapipe_check.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"tensorflow", "keras", "mobilevision", "cv2"}, imported
