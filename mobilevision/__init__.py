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
import platform as _platform

from mobilevision import tf_logs as _tf_logs

_tf_logs.install()
# Two TensorFlow settings for training speed on a CPU, unless the user chose (docs/training.md,
# "Precision and speed"; both are read when TensorFlow starts, so they are set before it is
# imported):
# - TF_ENABLE_ONEDNN_OPTS=1 on x86-64: TensorFlow turns its oneDNN kernels (convolutions, fused
#   BatchNorm) on by default only on CPUs with AVX-512 VNNI / BF16 or AMX, and runs its own Eigen
#   ones elsewhere; oneDNN dispatches to AVX2 as well, and trained the SSDLite-320 step about 1.6x
#   faster than Eigen when held to AVX2 (benchmarks/README.md).
# - TF_CPU_ALLOCATOR_USE_BFC=true where those oneDNN ops are off: with glibc's malloc each
#   activation over 32 MB of the Eigen kernels is a fresh mmap whose pages fault in every step
#   (150 000 faults per SSDLite-320 step); TensorFlow's caching allocator avoids that. With the
#   oneDNN ops on it made the step 5-12% slower, so there it stays off.
if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
if _os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("", "0", "false"):
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
