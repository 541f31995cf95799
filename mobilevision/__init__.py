"""mobilevision: MobileNetV2 with classifier, SSDLite and DeepLabv3 heads, in Keras 3.

    import mobilevision as mv
    cfg = mv.load_config("shapes_classifier.yaml", overrides=["train.epochs=2"])
    model = mv.build_model(cfg)        # takes RGB pixels 0..255, normalizes inside
    backbone = mv.build_backbone(cfg)  # image -> {tap name: feature map}
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mobilevision.config import ConfigError, load_config  # noqa: E402
from mobilevision.version import __version__  # noqa: E402


def build_model(cfg):
    """The task model for `cfg` (uncompiled); see mobilevision.tasks."""
    from mobilevision.tasks import build_model as _build

    return _build(cfg)


def build_backbone(cfg, taps=None):
    """The backbone for `cfg`: keras.Model from pixels to {tap name: feature map}."""
    from mobilevision.tasks.base import build_backbone as _build

    return _build(cfg, taps)


__all__ = ["__version__", "ConfigError", "load_config", "build_model", "build_backbone"]
