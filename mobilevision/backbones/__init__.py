"""Backbones: image -> dict of named feature maps. Registry: name -> `Backbone`.

A backbone module provides three things, which is all a head or a task ever learns about it:

- `build(input_shape, alpha, output_stride, taps, bn_momentum, weight_decay)` -> keras.Model from
  (N, H, W, 3) pixels 0..255 to {tap name: (N, H/stride, W/stride, channels)};
- `feature_specs(alpha, output_stride)` -> {tap name: (channels, stride)} for every tappable layer,
  without building anything (configs are checked against it before a model exists);
- `head_taps`: {task name: the taps that task's head reads by default, finest first};
- `taps`: the taps worth knowing (`profile` lists them with shapes and strides);
- `imagenet` (optional): `(alpha, input_size) -> (file name, note)` of published ImageNet weights
  and `imagenet_url`, the folder they are downloaded from (`model.backbone.weights: imagenet`,
  see `mobilevision.backbones.imagenet`).

Adding a backbone (MobileNetV3, ...) is one module and one line here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from mobilevision.backbones import mobilenet_v2 as _mobilenet_v2


class Backbone(NamedTuple):
    build: Callable
    feature_specs: Callable
    head_taps: dict
    taps: tuple
    imagenet: Optional[Callable] = None
    imagenet_url: str = ""


BACKBONES = {
    "mobilenet_v2": Backbone(_mobilenet_v2.mobilenet_v2, _mobilenet_v2.feature_specs,
                             _mobilenet_v2.HEAD_TAPS, _mobilenet_v2.DEFAULT_TAPS,
                             _mobilenet_v2.imagenet_file, _mobilenet_v2.IMAGENET_BASE_URL),
}

__all__ = ["BACKBONES", "Backbone"]
