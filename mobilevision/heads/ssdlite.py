"""SSDLite head (Sandler et al. 2018, section 6.2; TF Object Detection API `ssdlite_mobilenet_v2`).

The backbone maps the config taps (for MobileNetV2 by default block 13's expansion, stride 16,
and the last 1x1 conv, stride 32, at output stride 32) are followed by four extra layers, each
1x1 (depth/2) -> 3x3 depthwise stride 2 -> 1x1 (depth), all with BN + ReLU6; the extras halve the
last tap's map, whatever its stride (at output stride 16 both taps are at stride 16 and the
extras give 32, 64, 128, 256). Every map gets a box and a class predictor that are depthwise
separable: 3x3 depthwise + BN + ReLU6, then a 1x1 conv with bias and no activation. The head
sees only the maps; it never names a backbone layer.

Choices follow the reference implementation (TF OD API `ssd_mobilenet_v2_feature_extractor`,
`feature_map_generators.multi_resolution_feature_maps`, `ssdlite_mobilenet_v2_coco.config`):

- Extra-layer depths scale with the backbone's width multiplier: `max(int(d * alpha), 16)`
  (`depth_multiplier`, `min_depth: 16`). At alpha 1.0 they are exactly 512, 256, 256, 128.
- BatchNorm: epsilon 1e-3, momentum (slim `decay`) 0.9997; convs before a BN have no bias.
- "SAME" padding on the stride-2 depthwise convs (`use_explicit_padding: false`), so sizes halve
  rounding up: 320 px gives maps 20, 10, 5, 3, 2, 1.
- Weight decay reaches every kernel of the head, depthwise included (the OD API's conv
  hyperparams apply the regularizer to separable convs too); biases are not decayed.
- Kernels start from a truncated normal with stddev 0.03, biases at zero (the config's
  initializer).

Output order, which the anchor generator must share: map by map (the backbone maps in the order
given, then the extras), within a map cell by cell row-major (y, then x), within
a cell anchor by anchor. That is what reshaping the (N, h, w, A * k) predictor output to
(N, h * w * A, k) gives.
"""

from __future__ import annotations

import keras
from keras import layers

from mobilevision.workarounds import BatchNormalization, Conv2D

EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16
BN_MOMENTUM = 0.9997  # ssdlite_mobilenet_v2_coco.config: batch_norm { decay: 0.9997 }
BN_EPSILON = 1e-3
BOX_CODE_SIZE = 4     # (ty, tx, th, tw), decoded by the box coder


def extra_layer_depths(depth_multiplier: float = 1.0, extra_depths=EXTRA_DEPTHS,
                       min_depth: int = MIN_DEPTH) -> list[tuple[int, int]]:
    """(1x1 depth, output depth) of each extra layer: the OD API's `depth_fn`,
    max(int(depth * depth_multiplier), min_depth), applied to depth / 2 and depth."""
    def depth_fn(depth):
        return max(int(depth * depth_multiplier), min_depth)
    return [(depth_fn(d / 2), depth_fn(d)) for d in extra_depths]


def _bn(momentum, name):
    return BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=momentum, name=name)


def _conv_bn_relu(x, filters, name, momentum, reg, init):
    x = Conv2D(filters, 1, padding="same", use_bias=False, kernel_initializer=init,
               kernel_regularizer=reg, name=name)(x)
    x = _bn(momentum, f"{name}_BN")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _depthwise_bn_relu(x, strides, name, momentum, reg, init):
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               depthwise_initializer=init, depthwise_regularizer=reg,
                               name=name)(x)
    x = _bn(momentum, f"{name}_BN")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _predictor(x, kind, index, outputs_per_anchor, num_anchors, momentum, reg, init):
    """3x3 depthwise + BN + ReLU6, 1x1 conv with bias -> (N, h * w * num_anchors, k)."""
    p = f"ssd_{kind}_{index}"
    x = _depthwise_bn_relu(x, 1, f"{p}_depthwise", momentum, reg, init)
    x = Conv2D(num_anchors * outputs_per_anchor, 1, padding="same", use_bias=True,
               kernel_initializer=init, kernel_regularizer=reg, name=f"{p}_conv")(x)
    # Channel c of cell (y, x) is anchor c // k, component c % k: row-major cells, then anchors.
    return layers.Reshape((-1, outputs_per_anchor), name=f"{p}_reshape")(x)


def _join(parts, name):
    if len(parts) == 1:
        return layers.Activation("linear", dtype="float32", name=name)(parts[0])
    return layers.Concatenate(axis=1, dtype="float32", name=name)(parts)


def ssdlite_head(features, num_classes: int, anchor_generator, extra_depths=EXTRA_DEPTHS,
                 depth_multiplier: float = 1.0, min_depth: int = MIN_DEPTH,
                 bn_momentum: float = BN_MOMENTUM, weight_decay: float = 0.0):
    """Build the SSDLite head on backbone feature maps.

    Args:
      features: list of (N, h, w, C) maps with static h and w, finest first; the extra layers
        continue from the last one.
      num_classes: object classes, without background. The class predictor has
        num_classes + 1 outputs per anchor; index 0 is background (softmax).
      anchor_generator: gives the anchors per location of each map,
        `num_anchors_per_location(num_maps)` ([3, 6, 6, 6, 6, 6] for the recipe's six maps);
        never configured by hand, so predictors and anchors agree.
      extra_depths: nominal output depths of the extra layers (the 1x1 before the depthwise
        has half of each).
      depth_multiplier: the backbone's width multiplier alpha; extra depths become
        max(int(depth * alpha), min_depth), as in the OD API.
      min_depth: lower bound on extra-layer depths.
      bn_momentum: BatchNorm moving-average momentum (0.9997 in the reference config; a short
        training run may want less, so the moving statistics catch up).
      weight_decay: L2 on every kernel of the head, TF-slim scale (loss += wd/2 * sum(w^2)).

    Returns:
      (outputs, sizes):
      - outputs: {"boxes": (N, A, 4) box encodings, "classes": (N, A, num_classes + 1) logits},
        both float32 even under mixed precision; A = sum(h * w * anchors) over the maps, in the
        order of the module docstring.
      - sizes: [(h, w)] of every map the predictors run on, the backbone maps then the extras:
        what the anchors are made from.
    """
    maps = list(features)
    if not maps:
        raise ValueError("ssdlite_head needs at least one feature map")
    if any(m.shape[1] is None or m.shape[2] is None for m in maps):
        raise ValueError("ssdlite_head needs feature maps with a static size; build the model "
                         "with a fixed input size")
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    init = keras.initializers.TruncatedNormal(mean=0.0, stddev=0.03)

    x = maps[-1]
    depths = extra_layer_depths(depth_multiplier, extra_depths, min_depth)
    for i, (mid, depth) in enumerate(depths, 1):
        p = f"ssd_extra_{i}"
        x = _conv_bn_relu(x, mid, f"{p}_expand", bn_momentum, reg, init)
        x = _depthwise_bn_relu(x, 2, f"{p}_depthwise", bn_momentum, reg, init)
        x = _conv_bn_relu(x, depth, f"{p}_project", bn_momentum, reg, init)
        maps.append(x)

    num_anchors = [int(a) for a in anchor_generator.num_anchors_per_location(len(maps))]
    boxes, classes = [], []
    for k, (fmap, anchors) in enumerate(zip(maps, num_anchors)):
        boxes.append(_predictor(fmap, "box", k, BOX_CODE_SIZE, anchors, bn_momentum, reg, init))
        classes.append(_predictor(fmap, "class", k, num_classes + 1, anchors, bn_momentum, reg,
                                  init))
    # float32 outputs under mixed precision: the Concatenate casts its inputs (softmax and the
    # smooth-L1 loss then run in float32).
    outputs = {"boxes": _join(boxes, "boxes"), "classes": _join(classes, "classes")}
    sizes = [(int(m.shape[1]), int(m.shape[2])) for m in maps]
    return outputs, sizes
