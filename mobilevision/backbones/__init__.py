"""Backbones: image -> dict of named feature maps. Registry: name -> builder."""

from mobilevision.backbones.mobilenet_v2 import DEFAULT_TAPS, feature_specs, mobilenet_v2

BACKBONES = {"mobilenet_v2": mobilenet_v2}
FEATURE_SPECS = {"mobilenet_v2": feature_specs}

__all__ = ["BACKBONES", "FEATURE_SPECS", "DEFAULT_TAPS", "feature_specs", "mobilenet_v2"]
