"""Run an exported file in the runtime an app would use, behind the one method the tasks'
evaluation calls on a Keras model: `predict_on_batch(images (N, H, W, 3) float32 0..255)`.

What it returns is the task's `from_exported` of the file's outputs, in the structure the task's
evaluation consumes, so that code runs unchanged: a detector's SavedModel and TFLite files
decoded their detections themselves and hand over `DetectionTask.decode`'s structure, which
`postprocess` passes through; ONNX files hold the raw outputs, as the Keras model returns them,
and `postprocess` decodes them with the same `decode`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevision.export.formats import ExportError


def load_exported(path, task, num_threads: int | None = None):
    """The right runner for `path`: a .tflite file, a SavedModel folder or a .onnx file, checked
    against the task of the config (outputs, input size). A file that cannot be loaded, or was
    exported for another task or size, is an ExportError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise ExportError(f"--model {path}: a folder, but not a SavedModel (no saved_model.pb)")
    if not path.is_dir() and path.suffix not in (".tflite", ".onnx"):
        raise ExportError(f"--model {path}: expected a .tflite or .onnx file or a SavedModel folder")
    try:
        if path.is_dir():
            runner = SavedModelRunner(path, task)
        elif path.suffix == ".tflite":
            runner = TFLiteRunner(path, task, num_threads=num_threads)
        else:
            from mobilevision.export.onnx import OnnxModel

            runner = OnnxModel(path, num_threads=num_threads)
    except ExportError:
        raise
    except (ImportError, ValueError, KeyError, RuntimeError, OSError) as e:
        raise ExportError(f"--model {path}: cannot load it: {e}") from e
    _check_fits(path, runner, task)
    return runner


def _check_fits(path, runner, task) -> None:
    """The file's input size is the config's, and its outputs are the task's."""
    want = tuple(task.cfg.model.input_size)
    got = tuple(runner.input_shape[1:3])
    if got != want:
        raise ExportError(f"--model {path}: input is {got} but the config's model.input_size is "
                          f"{want}: evaluate with the config it was exported from")
    from mobilevision.export.metadata import TASK_OUTPUTS

    names = set(getattr(runner, "output_names", ()) or ())
    if str(path).endswith(".onnx"):
        expected = RAW_OUTPUTS[task.name]
    else:  # a TFLite file's outputs, which a SavedModel's include
        expected = {o.signature_name for o in TASK_OUTPUTS[task.name]}
    if expected and not expected <= names:
        raise ExportError(f"--model {path}: outputs {sorted(names)}, but a {task.name} file has "
                          f"{sorted(expected)}: was it exported for another task?")


# Output names of a raw (ONNX) file per task: single-output models keep the Keras layer's name,
# so only the detector's are fixed.
RAW_OUTPUTS = {"classification": set(), "segmentation": set(), "detection": {"boxes", "classes"}}


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
        inputs = self.runner.get_input_details()
        if "image" not in inputs:
            raise ExportError(f"{path}: no input named `image` (found {sorted(inputs)}): not a "
                              f"file this toolkit exported")
        detail = inputs["image"]
        self.input_dtype = detail["dtype"]
        self.input_shape = (None, *detail["shape"][1:])
        self.output_names = list(self.runner.get_output_details())

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
        self.output_names = list(self.fn.structured_outputs)

    def predict_on_batch(self, images):
        import tensorflow as tf

        out = self.fn(images=tf.convert_to_tensor(np.asarray(images, np.float32)))
        return self.task.from_exported({k: v.numpy() for k, v in out.items()})
