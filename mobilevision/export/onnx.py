"""ONNX export of a model that owns its decoder, through tf2onnx.

The file computes what the Keras model's `predict` returns (`model.decode(model(image))`, NMS
included: TensorFlow's CombinedNonMaxSuppression becomes ONNX's NonMaxSuppression): input `image`
float32 (N, H, W, 3) pixels 0..255 (the model normalizes inside), N dynamic; one output per
decoded output, by name (`formats.TASK_OUTPUTS`). `runtime.OnnxRunner` runs it.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

# Opset 17 (ONNX 1.12, 2022) runs on onnxruntime >= 1.13 and on most other runtimes; the
# MobileNetV2 models need nothing newer (Conv, Clip, Resize, NonMaxSuppression ...).
DEFAULT_OPSET = 17
INPUT_NAME = "image"
BATCH_DIM = "N"
INSTALL_HINT = 'pip install "mobilevision[onnx]"'


def require(module: str):
    """Import `module` (tf2onnx, onnx, onnxruntime) or raise an ImportError that says how to
    install the ONNX extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ONNX export and inference need the `{module}` package, which is not "
                          f"installed ({e}); install the extra: {INSTALL_HINT}") from e


# Export ----------------------------------------------------------------------------------------
def export_onnx(model, path, opset: int | None = DEFAULT_OPSET, metadata: dict | None = None) -> Path:
    """Write `model` (a single-input keras.Model that owns its decoder, TensorFlow backend) as an
    ONNX file computing `model.decode(model(image))`.

    Args:
      path: the .onnx file, replaced atomically (written beside it, then renamed).
      opset: ONNX opset the graph is written for (None: DEFAULT_OPSET); tf2onnx 1.17 writes
        opsets up to 18 and refuses newer ones.
      metadata: {key: text} stored in the file's metadata_props (what export knows of the model).

    Returns:
      the path written. The file's input is `image` (N, H, W, 3) float32, N dynamic.
    """
    import keras

    from mobilevision.utils import atomic_write_bytes

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("ONNX export converts the TensorFlow graph (tf2onnx); run it with "
                           f"KERAS_BACKEND=tensorflow, not {keras.backend.backend()!r}")
    tf2onnx = require("tf2onnx")
    onnx = require("onnx")
    fn, spec = _serving_function(model)
    proto = _convert(tf2onnx, fn, spec, opset or DEFAULT_OPSET)
    _name_batch_dim(proto)
    for key, value in (metadata or {}).items():
        _set_metadata(proto, key, value)
    onnx.checker.check_model(proto)  # fail here, not in the runtime that loads the file
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def _serving_function(model):
    """-> (tf.function image -> {name: tensor}, its input TensorSpec): tf2onnx names the ONNX
    outputs by the dict's keys."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"ONNX export takes a model with one image input; {model.name!r} has "
                         f"{len(model.inputs)}")
    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec], autograph=False)
    def serve(image):
        return dict(model.decode(model(image, training=False)))

    return serve, spec


def _convert(tf2onnx, fn, spec, opset: int):
    """tf.function -> onnx ModelProto (in memory; written by the caller)."""
    # tf2onnx logs every conversion step at INFO on its own logger; keep warnings and errors.
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=opset)
    finally:
        logger.setLevel(level)
    return proto


def _name_batch_dim(proto) -> None:
    """Give the batch axis of the graph's inputs and outputs one symbolic name, `N` (tf2onnx
    writes a fresh `unk__<n>` for each), so the file states they share a size."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def _set_metadata(proto, key: str, value: str) -> None:
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    prop = proto.metadata_props.add()
    prop.key, prop.value = key, value
