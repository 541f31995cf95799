"""Run an exported file in the runtime an app would use, behind the one method the tasks'
evaluation calls on a Keras model: `predict_on_batch(images (N, H, W, 3) float32 0..255)`.

What it returns is the task's `from_exported` of the file's outputs, i.e. what the Keras model's
`predict_on_batch` would give, so the task's own evaluation code runs unchanged (a detector's
decoded detections pass through `DetectionTask.postprocess`; ONNX files hold the raw outputs and
return them as they are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevision.export.formats import ExportError


def load_exported(path, task, num_threads: int | None = None):
    """The right runner for `path`: a .tflite file, a SavedModel folder or a .onnx file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ExportError(f"--model {path}: a folder, but not a SavedModel (no saved_model.pb)")
        return SavedModelRunner(path, task)
    if path.suffix == ".tflite":
        return TFLiteRunner(path, task, num_threads=num_threads)
    if path.suffix == ".onnx":
        from mobilevision.export.onnx import OnnxModel

        return OnnxModel(path, num_threads=num_threads)
    raise ExportError(f"--model {path}: expected a .tflite or .onnx file or a SavedModel folder")


def _stack(outs: list[dict]) -> dict:
    """Per-image outputs, each with a leading batch axis of 1 -> one batch."""
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}


class TFLiteRunner:
    """A TFLite file in LiteRT (XNNPACK), one image at a time (the files have batch 1). A uint8
    input gets the pixels rounded, as a camera frame would arrive."""

    def __init__(self, path, task, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.task = Path(path), task
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner()
        detail = self.runner.get_input_details()["image"]
        self.input_dtype = detail["dtype"]
        self.input_shape = (None, *detail["shape"][1:])
        want = tuple(task.cfg.model.input_size)
        if tuple(detail["shape"][1:3]) != want:
            raise ExportError(f"{path}: input is {tuple(detail['shape'][1:3])} but the config's "
                              f"model.input_size is {want}: export and evaluate with one config")

    def raw(self, image: np.ndarray) -> dict:
        """One image (1, H, W, 3) float32 0..255 -> the file's outputs by signature name."""
        if self.input_dtype == np.uint8:
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        return self.runner(image=image.astype(self.input_dtype, copy=False))

    def predict_on_batch(self, images):
        images = np.asarray(images, np.float32)
        return self.task.from_exported(_stack([self.raw(images[i:i + 1]) for i in range(len(images))]))


class SavedModelRunner:
    """A SavedModel's `serving_float` signature in TensorFlow, whole batches."""

    def __init__(self, path, task):
        import tensorflow as tf

        self.path, self.task = Path(path), task
        loaded = tf.saved_model.load(str(path))
        if "serving_float" not in loaded.signatures:
            raise ExportError(f"{path}: no `serving_float` signature (found "
                              f"{', '.join(loaded.signatures) or 'none'}); export it with "
                              f"scripts/export.py --format saved_model")
        self._loaded = loaded  # keeps the variables alive
        self.fn = loaded.signatures["serving_float"]
        shape = self.fn.structured_input_signature[1]["images"].shape
        self.input_shape = (None, *shape[1:])

    def predict_on_batch(self, images):
        import tensorflow as tf

        out = self.fn(images=tf.convert_to_tensor(np.asarray(images, np.float32)))
        return self.task.from_exported({k: v.numpy() for k, v in out.items()})
