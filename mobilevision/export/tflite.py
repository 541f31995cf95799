"""TFLite conversion: float32, float16 weights, or full-integer int8 calibrated on the train split.

The route is the one that keeps the weights: a SavedModel that tracks the model's variables
(`saved_model.write_saved_model`), then `TFLiteConverter.from_saved_model`. Only builtin ops are
allowed, plus the one custom op LiteRT and MediaPipe ship (TFLite_Detection_PostProcess); a file
that would need Flex (SELECT_TF_OPS) ops, which apps cannot run, is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mobilevision import tf_logs
from mobilevision.export.formats import ExportError

QUANTIZATIONS = ("float32", "float16", "int8")


def with_full_input_range(calibration: np.ndarray) -> np.ndarray:
    """A copy of the calibration images whose first image has one black and one white pixel.
    The converter fits a uint8 input's quantization to the range it saw, and apps (MediaPipe
    included) feed raw pixel bytes, which only scale 1 / zero point 0 reads correctly; two
    pixels fix that range without moving the inner layers' statistics."""
    images = np.array(calibration, np.float32, copy=True)
    images[0, 0, 0, :] = 0.0
    images[0, 0, -1, :] = 255.0
    return images


def convert_tflite(model, quantization: str = "float32", *, nms: str = "regular",
                   calibration: np.ndarray | None = None, input_type: str = "uint8") -> bytes:
    """The model as a TFLite flatbuffer (no metadata yet; see `metadata.add_metadata`).

    Args:
      model: a Keras model that owns its decoder (`tasks.base.DecodingModel`), weights loaded.
      quantization: "float32", "float16" (weights stored in float16) or "int8" (full-integer:
        every op in int8, calibrated on `calibration`).
      nms: detection only, "regular" (per-class, as the Keras decoder) or "fast".
      calibration: int8 only, (n, H, W, 3) float32 0..255 images, prepared as `predict`
        prepares them.
      input_type: int8 only, "uint8" (pixels as they come from a camera; the input quantization
        is fitted to 0..255) or "float32".

    Returns the file's bytes: input `image` (1, H, W, 3), outputs the decoded ones, as
    `model.predict` returns them (`formats.TASK_OUTPUTS`).
    """
    return convert_tflite_many(model, (quantization,), nms=nms, calibration=calibration,
                               input_type=input_type)[quantization]


def convert_tflite_many(model, quantizations, seconds: dict | None = None,
                        **kwargs) -> dict[str, bytes]:
    """`convert_tflite` for several quantizations from one SavedModel (written once: it is the
    slow half of a conversion). Returns {quantization: bytes}; with `seconds`, fills it with
    each file's conversion time (the SavedModel's shared equally among them)."""
    import time

    import tensorflow as tf

    from mobilevision.export.saved_model import write_saved_model
    from mobilevision.export.serving import tflite_detections

    nms = kwargs.pop("nms", "regular")
    for q in quantizations:
        if q not in QUANTIZATIONS:
            raise ExportError(f"quantization {q!r}: choose one of {', '.join(QUANTIZATIONS)}")
    h, w = model.input_shape[1:3]
    detector = getattr(model, "decoder", None) is not None

    def serve(image):
        if detector:  # TFLite_Detection_PostProcess in place of the decoder's NMS
            return tflite_detections(model, image, nms)
        return model.decode(model(image, training=False))

    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mobilevision_tflite_") as tmp:
        path = write_saved_model(Path(tmp) / "saved_model", model, {
            "serving_default": (serve, [tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])})
        shared = (time.perf_counter() - start) / max(1, len(quantizations))
        files = {}
        for q in quantizations:
            start = time.perf_counter()
            files[q] = convert_saved_model(model, path, q, custom_ops=DETECTION_OPS if detector
                                           else (), **kwargs)
            seconds[q] = shared + time.perf_counter() - start
        return files


def convert_saved_model(model, saved_model, quantization, calibration=None,
                        input_type="uint8", custom_ops=()) -> bytes:
    """A SavedModel folder written by `write_saved_model` -> TFLite bytes, with the export's
    converter settings and checks (builtin ops only, no Flex, weights present). `model` is the
    Keras model the SavedModel holds (for the weight check); `custom_ops` the custom ops the file
    may use (a detector's TFLite_Detection_PostProcess). Used by `convert_tflite_many` and by
    benchmarks that convert other functions of a model the same way."""
    import tensorflow as tf

    if quantization == "int8" and (calibration is None or not len(calibration)):
        raise ExportError("int8 quantization needs calibration images")
    if input_type not in ("uint8", "float32"):
        raise ExportError(f"--input-type {input_type!r}: choose uint8 or float32")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.allow_custom_ops = bool(custom_ops)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        images = with_full_input_range(calibration)
        converter.representative_dataset = lambda: ([x[None]] for x in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if input_type == "uint8" else tf.float32
        converter.inference_output_type = tf.float32
    with tf_logs.quiet_litert():  # the quantizer's settings line; errors pass
        data = converter.convert()
    if quantization == "int8" and input_type == "uint8":
        _check_uint8_input(data)
    check_ops(data, allow_custom=custom_ops)
    check_weights(data, model, quantization)
    return data


DETECTION_OPS = ("TFLite_Detection_PostProcess",)  # the one custom op LiteRT and MediaPipe ship


def _check_uint8_input(data: bytes) -> None:
    """The uint8 input must read pixel bytes as they are (scale 1, zero point 0)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    q = graph.Tensors(graph.Inputs(0)).Quantization()
    scale, zero = (q.Scale(0), q.ZeroPoint(0)) if q and q.ScaleLength() else (None, None)
    if (scale, zero) != (1.0, 0):
        raise ExportError(f"the int8 file's uint8 input is quantized with scale {scale}, zero "
                          f"point {zero}, not 1 and 0, so raw pixels would be misread; export "
                          f"with --input-type float32")


def op_names(data: bytes) -> list[str]:
    """Names of the operator codes a TFLite file uses: builtin names (CONV_2D ...) and custom
    op names as written (a Flex op's name starts with "Flex")."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            names.append(code.CustomCode().decode())
        else:
            names.append(builtin.get(op, str(op)))
    return names


def check_ops(data: bytes, allow_custom=()) -> None:
    """Refuse Flex ops and any custom op but the allowed ones: apps' runtimes have neither."""
    from ai_edge_litert import schema_py_generated as schema

    builtin = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    bad = sorted({n for n in op_names(data) if n not in builtin and n not in allow_custom})
    if bad:
        raise ExportError(f"the converted TFLite file needs ops that LiteRT's builtin resolver "
                          f"does not have: {', '.join(bad)} (Flex ops need the TensorFlow "
                          f"runtime, which apps do not ship)")


def check_weights(data: bytes, model, quantization: str) -> None:
    """A file smaller than its weights has lost them (the converter does that without an error
    when the variables were not tracked): refuse it rather than ship it."""
    per_weight = {"float32": 4, "float16": 2, "int8": 1}[quantization]
    expected = model.count_params() * per_weight
    if len(data) < 0.8 * expected:
        raise ExportError(f"the converted TFLite file is {len(data)} bytes but the model's "
                          f"{model.count_params()} weights need about {expected} in "
                          f"{quantization}: the weights were not frozen into the file")
