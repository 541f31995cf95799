"""DeepLabv3 head (Chen et al. 2017) as the MobileNetV2 paper uses it (Table 7, docs/paper.md).

On one feature map (the paper's MNet V2*: the 320-channel map before the 1280 conv; the config
picks the tap):

    1x1 conv branch ─────────────────────────┐
    3x3 atrous branches (ASPP, optional) ────┤ concat ─ 1x1 projection (BN, ReLU) ─ dropout
    image pooling: mean ─ 1x1 conv ─ broadcast ┘        ─ 1x1 logits ─ bilinear up x stride

Every conv is followed by BatchNorm and ReLU, except the logits (a bias, no activation). The head
sees only its feature map and that map's stride; it knows nothing of the backbone.
"""

from __future__ import annotations

import keras
from keras import layers

from mobilevision.workarounds import BatchNormalization, Conv2D

# Atrous rates of the three ASPP branches per stride of the head's feature map (the backbone's
# output stride for the default tap). 6/12/18 at stride 16 and 12/24/36 at 8 are DeepLabv3's; at
# 32 the map is half the size of 16's, so the rates are halved too (3/6/9) to look at the same
# image extent. A rate at or above the map size only hits the centre tap and zero padding, so
# larger rates would turn the branch into a 1x1 conv.
DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def aspp_rates(stride: int, rates=None) -> tuple[int, ...]:
    """The configured `rates`, or DeepLabv3's default for a feature map of `stride` (8, 16, 32)."""
    if rates:
        return tuple(int(r) for r in rates)
    if stride not in DEFAULT_RATES:
        raise ValueError(f"no default ASPP rates for a feature map of stride {stride}; "
                         f"expected one of {sorted(DEFAULT_RATES)} or explicit rates")
    return DEFAULT_RATES[stride]


def _conv_bn_relu(x, filters, kernel, name, rate=1, momentum=0.9997, reg=None):
    x = Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False,
               kernel_regularizer=reg, name=name)(x)
    x = BatchNormalization(epsilon=1e-5, momentum=momentum, name=f"{name}_BN")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def deeplabv3_head(feature, stride: int, num_classes: int, aspp: bool = True, rates=(6, 12, 18),
                   channels: int = 256, dropout: float = 0.1, bn_momentum: float = 0.9997,
                   weight_decay: float = 0.0):
    """Args:
      feature: (N, h, w, C) feature map with static h and w (the image-pooling branch is
        broadcast back to h x w).
      stride: the map's stride relative to the input; logits are upsampled by it, so they come
        out at (N, h * stride, w * stride, num_classes), the input size.
      num_classes: output classes, background included (21 for PASCAL VOC).
      aspp: add one 3x3 atrous conv branch per rate in `rates`.
      channels: output channels of every branch and of the projection (256 in the paper).
      dropout: rate before the logits (DeepLab keeps 0.9: 0.1).
      weight_decay: L2 on conv kernels, TF-slim scale (loss += wd/2 * sum(w^2)).

    Returns:
      (N, h * stride, w * stride, num_classes) float32 logits, also under mixed precision.
    """
    h, w = feature.shape[1], feature.shape[2]
    if h is None or w is None:
        raise ValueError("deeplabv3_head needs a feature map with a static size; build the "
                         "model with a fixed input size")
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    branches = [_conv_bn_relu(feature, channels, 1, "aspp0", momentum=bn_momentum, reg=reg)]
    if aspp:
        for i, rate in enumerate(rates, start=1):
            branches.append(_conv_bn_relu(feature, channels, 3, f"aspp{i}", rate=int(rate),
                                          momentum=bn_momentum, reg=reg))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling_mean")(feature)
    pooled = _conv_bn_relu(pooled, channels, 1, "image_pooling", momentum=bn_momentum, reg=reg)
    # Bilinear upsampling of a 1x1 map is a broadcast. "bilinear" makes it one resize op, which
    # TFLite's XNNPACK runs; "nearest" repeats rows and columns as two TILE ops that XNNPACK
    # leaves to slower kernels, splitting the graph (measured: benchmarks/latency.py).
    branches.append(layers.UpSampling2D((h, w), interpolation="bilinear",
                                        name="image_pooling_broadcast")(pooled))
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_bn_relu(x, channels, 1, "concat_projection", momentum=bn_momentum, reg=reg)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = Conv2D(num_classes, 1, kernel_regularizer=reg, dtype="float32",
                    name="logits")(x)
    if stride > 1:
        logits = layers.UpSampling2D(stride, interpolation="bilinear", dtype="float32",
                                     name="upsample_logits")(logits)
    return logits
