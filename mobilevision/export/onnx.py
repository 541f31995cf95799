"""ONNX export of a Keras model through tf2onnx, and `OnnxModel`, which runs the file in
onnxruntime behind the Keras calls the tasks' inference code makes (`predict_on_batch`,
`predict`, `input_shape`).

The file computes the Keras model as it is: input `image` float32 (N, H, W, 3) pixels 0..255
(the model normalizes inside), N dynamic; one ONNX output per Keras output, named after it
(a detector's `boxes` and `classes`). How the Keras outputs were structured (one tensor, a list
or a dict) is stored in the file's metadata, so `OnnxModel` returns the same structure.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np

# Opset 17 (ONNX 1.12, 2022) runs on onnxruntime >= 1.13 and on most other runtimes; the
# MobileNetV2 models need nothing newer (Conv, Clip, Resize, GlobalAveragePool ...).
DEFAULT_OPSET = 17
INPUT_NAME = "image"
BATCH_DIM = "N"
# metadata_props key holding {"structure": "tensor" | "list" | "dict", "names": [...]}.
OUTPUTS_KEY = "mobilevision.outputs"
INSTALL_HINT = 'pip install "mobilevision[onnx]"'


def _require(module: str):
    """Import `module` (tf2onnx, onnx, onnxruntime) or raise an ImportError that says how to
    install the ONNX extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ONNX export and inference need the `{module}` package, which is not "
                          f"installed ({e}); install the extra: {INSTALL_HINT}") from e


# Export ----------------------------------------------------------------------------------------
def export_onnx(model, path, opset: int | None = DEFAULT_OPSET, output_names=None) -> Path:
    """Write `model` (a single-input keras.Model, TensorFlow backend) as an ONNX file.

    Args:
      model: takes (N, H, W, 3) float32 pixels 0..255 and returns a tensor, a list of tensors or
        a dict of tensors (the detector's {"boxes": (N, A, 4), "classes": (N, A, K+1)}).
      path: the .onnx file, replaced atomically (written beside it, then renamed).
      opset: ONNX opset the graph is written for (None: DEFAULT_OPSET); tf2onnx 1.17 writes
        opsets up to 18 and refuses newer ones.
      output_names: names for the ONNX outputs of a tensor or list model (one per output);
        default the Keras model's `output_names`. A dict model's outputs keep its keys.

    Returns:
      the path written. The file's input is `image` (N, H, W, 3) float32, N dynamic.
    """
    import keras

    from mobilevision.utils import atomic_write_bytes

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("ONNX export converts the TensorFlow graph (tf2onnx); run it with "
                           f"KERAS_BACKEND=tensorflow, not {keras.backend.backend()!r}")
    tf2onnx = _require("tf2onnx")
    onnx = _require("onnx")
    fn, spec, outputs = _serving_function(model, output_names)
    proto = _convert(tf2onnx, fn, spec, opset or DEFAULT_OPSET)
    _name_batch_dim(proto)
    _set_metadata(proto, OUTPUTS_KEY, json.dumps(outputs))
    onnx.checker.check_model(proto)  # fail here, not in the runtime that loads the file
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def _serving_function(model, output_names=None):
    """-> (tf.function image -> {name: tensor}, its input TensorSpec, {"structure", "names"}).

    The function returns a dict so tf2onnx names the ONNX outputs by its keys; the structure
    and order of the Keras outputs are recorded while tracing, for `OnnxModel` to rebuild."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"ONNX export takes a model with one image input; {model.name!r} has "
                         f"{len(model.inputs)}")
    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name=INPUT_NAME)
    outputs = {}

    @tf.function(input_signature=[spec], autograph=False)
    def serve(image):
        out = model(image, training=False)
        named = _name_outputs(out, output_names or list(model.output_names))
        outputs.update(structure=_structure(out), names=list(named))
        return named

    serve.get_concrete_function()  # trace now, which fills `outputs`
    return serve, spec, outputs


def _structure(out) -> str:
    if isinstance(out, dict):
        return "dict"
    return "list" if isinstance(out, (list, tuple)) else "tensor"


def _name_outputs(out, names) -> dict:
    """Keras outputs (tensor, list or dict) -> {ONNX output name: tensor}, in output order."""
    if isinstance(out, dict):
        return dict(out)
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(names) != len(out) or len(set(names)) != len(names):
        raise ValueError(f"output_names {names} do not name the model's {len(out)} outputs "
                         "once each")
    return dict(zip(names, out))


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


# Inference -------------------------------------------------------------------------------------
class OnnxModel:
    """An ONNX file run by onnxruntime on the CPU, standing in for the Keras model it came from.

    OnnxModel(path, num_threads=None): num_threads sets onnxruntime's intra-op threads
    (default: onnxruntime's, one per core)."""

    def __init__(self, path, num_threads: int | None = None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one image input, found "
                             f"{[i.name for i in inputs]}")
        self._input = inputs[0]
        self.structure, self.output_names = _read_outputs(self.session)

    @property
    def input_shape(self) -> tuple:
        """(None, H, W, 3) as Keras reports it; axes the file leaves open are None."""
        return (None, *(d if isinstance(d, int) else None for d in self._input.shape[1:]))

    def predict_on_batch(self, images):
        """images (N, H, W, 3) pixels 0..255 (array or tensor, any numeric dtype) -> what the
        Keras model's `predict_on_batch` returns: a float32 array (N, ...) for a one-output
        model, a list for several, a dict {name: (N, ...)} for a dict model."""
        x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        if x.ndim != 4:
            raise ValueError(f"expected images (N, H, W, 3), got shape {x.shape}")
        out = self.session.run(self.output_names, {self._input.name: x})
        if self.structure == "dict":
            return dict(zip(self.output_names, out))
        return out[0] if self.structure == "tensor" else out

    def predict(self, x, batch_size: int = 32, verbose=0):
        """Keras-style `predict`: x (N, H, W, 3) run in batches of `batch_size`, outputs
        concatenated along N in `predict_on_batch`'s structure (verbose is ignored)."""
        del verbose
        x = np.asarray(x, dtype=np.float32)
        parts = [self._flat(self.predict_on_batch(x[i:i + batch_size]))
                 for i in range(0, max(len(x), 1), batch_size)]
        flat = [np.concatenate(p, axis=0) for p in zip(*parts)]
        if self.structure == "dict":
            return dict(zip(self.output_names, flat))
        return flat[0] if self.structure == "tensor" else flat

    def _flat(self, out) -> list:
        if self.structure == "dict":
            return [out[k] for k in self.output_names]
        return [out] if self.structure == "tensor" else list(out)

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, input_shape={self.input_shape}, "
                f"outputs={self.output_names})")


def _read_outputs(session) -> tuple[str, list[str]]:
    """-> (structure, output names in Keras order) from the file's metadata; a file written by
    another tool gives "tensor" for one output and "dict" (by ONNX name) for several."""
    meta = session.get_modelmeta().custom_metadata_map.get(OUTPUTS_KEY)
    if meta:
        meta = json.loads(meta)
        return meta["structure"], list(meta["names"])
    names = [o.name for o in session.get_outputs()]
    return ("tensor" if len(names) == 1 else "dict"), names
