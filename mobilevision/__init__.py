"""mobilevision: MobileNetV2 with classifier, SSDLite and DeepLabv3 heads, in Keras 3.

    import mobilevision as mv

    run = mv.train("shapes_ssdlite.yaml", "train.epochs=3", output="runs/demo")
    model = mv.load("runs/demo")        # a run folder, a weights file with its config, or an
                                        # exported .tflite / .onnx / SavedModel
    result = model.predict("img.jpg")   # DetectionResult: boxes, scores, classes, names
    result.plot(), result.to_json()
    metrics = model.evaluate()          # what eval.json holds
    files = model.export(["tflite", "tflite_int8"])
    mv.load(files["tflite"]).predict("img.jpg")   # the same result type, in LiteRT

    cfg = mv.load_config("shapes_classifier.yaml", overrides=["train.epochs=2"])
    keras_model = mv.build_model(cfg)   # takes RGB pixels 0..255; predict returns decoded outputs

Importing this package (and running an exported .tflite or .onnx file) imports neither
TensorFlow nor Keras; they load when a Keras model or a dataset is needed, without TensorFlow's
benign C++ start-up lines (see mobilevision.tf_logs; MOBILEVISION_TF_LOGS=1 shows them).
"""

import os as _os

from mobilevision import tf_logs as _tf_logs

_tf_logs.install()
# TensorFlow's CPU tensors from its caching (BFC) allocator rather than malloc, unless the user
# chose: with glibc's malloc every activation over 32 MB is a fresh mmap whose pages fault in on
# every step (150 000 page faults per SSDLite-320 train step at batch 8); cached, they do not, and
# the step is 10-15% faster on 2-core machines (docs/training.md, "Speed"). Read by TensorFlow
# when it creates its CPU allocator, so it is set before TensorFlow is imported.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from mobilevision.api import Model, Run, load, load_keras, train  # noqa: E402
from mobilevision.config import ConfigError, load_config  # noqa: E402
from mobilevision.results import (ClassificationResult, DetectionResult,  # noqa: E402
                                  SegmentationResult, UnreadableImage)
from mobilevision.version import __version__  # noqa: E402


def build_model(cfg, input_size=None):
    """The task model for `cfg` (uncompiled, `model.weights` loaded); see mobilevision.tasks."""
    from mobilevision.tasks import build_model as _build

    return _build(cfg, input_size)


def build_backbone(cfg, taps=None):
    """The backbone for `cfg`: keras.Model from pixels to {tap name: feature map}."""
    from mobilevision.tasks.base import build_backbone as _build

    return _build(cfg, taps)


__all__ = ["__version__", "ConfigError", "load_config", "build_model", "build_backbone",
           "train", "load", "load_keras", "Model", "Run", "DetectionResult",
           "ClassificationResult", "SegmentationResult", "UnreadableImage"]
