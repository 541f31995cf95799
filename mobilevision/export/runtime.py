"""Run an exported file in the runtime an app would use, and read what export wrote into it.

    runner, info = open_exported("runs/x/export/x.tflite")
    info["task"], info["labels"], info["input_size"], info["config"]
    outputs = runner(images)   # (N, H, W, 3) float32 pixels 0..255 -> {name: (N, ...) numpy}

Every file computes the task's decoded outputs (`formats.TASK_OUTPUTS`), the very structure the
Keras model's `predict` returns, so the runners hand them over as they come. A .tflite file runs
in LiteRT and an .onnx file in ONNX Runtime, with numpy: neither imports TensorFlow nor Keras.
A SavedModel runs in TensorFlow.

What export wrote into each file (`INFO_FILE`, JSON: task, labels, input size, the resolved
config, format, version): a .tflite file carries it in the zip of associated files beside
labels.txt, an .onnx file in its metadata_props, a SavedModel in assets.extra/.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from mobilevision import tf_logs
from mobilevision.export.formats import ExportError

INFO_FILE = "mobilevision.json"
ONNX_INFO_KEY = "mobilevision"


def exported_kind(path) -> str | None:
    """"tflite", "onnx" or "saved_model" for a path that looks like an exported file, else
    None (not checked beyond its name)."""
    path = Path(path)
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").exists() else None
    return {".tflite": "tflite", ".onnx": "onnx"}.get(path.suffix.lower())


def open_exported(path, threads: int | None = None):
    """The runner for an exported file and what export wrote into it.

    path: a .tflite or .onnx file, or a SavedModel folder. threads: the runtime's threads
    (default: the runtime's own choice). Returns (runner, info). A file that cannot be read, or
    that this toolkit did not export (no `INFO_FILE`), is an ExportError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = exported_kind(path)
    if kind is None:
        raise ExportError(f"{path}: expected a .tflite or .onnx file or a SavedModel folder "
                          f"(with saved_model.pb)")
    runners = {"tflite": TFLiteRunner, "onnx": OnnxRunner, "saved_model": SavedModelRunner}
    try:
        runner = runners[kind](path, threads)
    except ExportError:
        raise
    except (ImportError, ValueError, KeyError, RuntimeError, OSError) as e:
        raise ExportError(f"{path}: cannot load it: {e}") from e
    info = runner.info()
    if tuple(info["input_size"]) != tuple(runner.input_size):
        raise ExportError(f"{path}: its {INFO_FILE} says input size {info['input_size']}, but "
                          f"the model takes {list(runner.input_size)}")
    return runner, info


def _parse_info(text, path) -> dict:
    try:
        info = json.loads(text)
        for key in ("task", "labels", "input_size"):
            info[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: unreadable {INFO_FILE} ({e})") from None
    return info


def _no_info(path) -> ExportError:
    return ExportError(f"{path}: holds no {INFO_FILE} (task, labels, input size), so it was not "
                       f"exported by this version of mobilevision; export it again with "
                       f"scripts/export.py")


class TFLiteRunner:
    """A TFLite file in LiteRT (XNNPACK), one image at a time (the files have batch 1). A uint8
    input gets the pixels rounded, as a camera frame would arrive."""

    def __init__(self, path, threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with tf_logs.quiet_litert():  # its XNNPACK line, at the first allocation
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.runner = self.interpreter.get_signature_runner()
        inputs = self.runner.get_input_details()
        if "image" not in inputs:
            raise ExportError(f"{path}: no input named `image` (found {sorted(inputs)}): not a "
                              f"file this toolkit exported")
        detail = inputs["image"]
        self.input_dtype = detail["dtype"]
        self.input_size = tuple(int(v) for v in detail["shape"][1:3])
        self.output_names = list(self.runner.get_output_details())

    def info(self) -> dict:
        try:
            with zipfile.ZipFile(io.BytesIO(self.path.read_bytes())) as zf:
                return _parse_info(zf.read(INFO_FILE).decode("utf-8"), self.path)
        except (zipfile.BadZipFile, KeyError):
            raise _no_info(self.path) from None

    def __call__(self, images) -> dict:
        images = np.asarray(images, np.float32)
        outs = []
        for image in images:
            x = image[None]
            if self.input_dtype == np.uint8:
                x = np.clip(np.round(x), 0, 255)
            outs.append(self.runner(image=x.astype(self.input_dtype, copy=False)))
        return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in self.output_names}


class OnnxRunner:
    """An .onnx file in ONNX Runtime on the CPU, whole batches (the batch axis is open)."""

    def __init__(self, path, threads=None):
        from mobilevision.export.onnx import require

        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != ["image"]:
            raise ExportError(f"{path}: expected one input named `image`, found "
                              f"{[i.name for i in inputs]}: not a file this toolkit exported")
        self.input_size = tuple(inputs[0].shape[1:3])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def info(self) -> dict:
        text = self.session.get_modelmeta().custom_metadata_map.get(ONNX_INFO_KEY)
        if text is None:
            raise _no_info(self.path)
        return _parse_info(text, self.path)

    def __call__(self, images) -> dict:
        x = np.ascontiguousarray(np.asarray(images, np.float32))
        return dict(zip(self.output_names, self.session.run(self.output_names, {"image": x})))


class SavedModelRunner:
    """A SavedModel's `serving_float` signature in TensorFlow, whole batches."""

    def __init__(self, path, threads=None):
        import tensorflow as tf

        self.path = Path(path)
        loaded = tf.saved_model.load(str(path))
        if "serving_float" not in loaded.signatures:
            raise ExportError(f"{path}: no `serving_float` signature (found "
                              f"{', '.join(loaded.signatures) or 'none'}); export it with "
                              f"scripts/export.py --format saved_model")
        self._loaded = loaded  # keeps the variables alive
        self.fn = loaded.signatures["serving_float"]
        shape = self.fn.structured_input_signature[1]["images"].shape
        self.input_size = (int(shape[1]), int(shape[2]))
        self.output_names = list(self.fn.structured_outputs)

    def info(self) -> dict:
        path = self.path / "assets.extra" / INFO_FILE
        if not path.is_file():
            raise _no_info(self.path)
        return _parse_info(path.read_text(encoding="utf-8"), self.path)

    def __call__(self, images) -> dict:
        import tensorflow as tf

        out = self.fn(images=tf.convert_to_tensor(np.asarray(images, np.float32)))
        return {k: v.numpy() for k, v in out.items()}
