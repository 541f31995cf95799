"""MobileNetV2 (Sandler et al. 2018, Table 2) with a width multiplier, an output stride reached by
dilation, and named feature taps.

Layer names, creation order and numerics follow `keras.applications.MobileNetV2`, so its weight
files load by name and, with the same weights, the two give the same outputs. The one addition is
a `Rescaling` layer at the input: our models take raw RGB pixels (0..255) and normalize inside,
to [-1, 1] exactly as `keras.applications.mobilenet_v2.preprocess_input` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from mobilevision.workarounds import BatchNormalization, Conv2D

# Table 2 of the paper: expansion t, output channels c, repeats n, first stride s.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))

# Taps most heads use; any layer name of the backbone can be tapped.
DEFAULT_TAPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                "block_13_expand_relu", "block_16_project", "out_relu")

# The taps each task's head reads unless `model.head.features` says otherwise (docs/paper.md): the
# classifier pools the last 1x1 conv; SSDLite (Table 6) reads block 13's expansion and the last
# 1x1 conv; DeepLabv3's MNet V2* (Table 7) the second-to-last map, before the 1280 conv.
HEAD_TAPS = {"classification": ("out_relu",),
             "detection": ("block_13_expand_relu", "out_relu"),
             "segmentation": ("block_16_project",)}

BN_EPSILON = 1e-3

# The ImageNet weights keras.applications publishes for MobileNetV2 (top removed), as its loader
# names them (keras/src/applications/mobilenet_v2.py): one file per width and square input size.
# Keras' loader accepts alphas 1.3 and 1.4 at every size, but only their 224 files exist (the
# TF-slim checkpoints they come from are 224 only; `alpha=1.4, 96 px` is a 404, keras-team/keras
# issue 16452), so those widths always use the 224 file.
IMAGENET_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_SIZES = {0.35: (96, 128, 160, 192, 224), 0.5: (96, 128, 160, 192, 224),
                  0.75: (96, 128, 160, 192, 224), 1.0: (96, 128, 160, 192, 224),
                  1.3: (224,), 1.4: (224,)}


def imagenet_file(alpha: float, input_size) -> tuple[str, str | None]:
    """The keras.applications ImageNet weights file (no top) for this width and input size.

    Args:
      alpha: width multiplier.
      input_size: (height, width) of the model's input.

    Returns:
      (file name, note): e.g. ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
      None). As Keras does, a non-square size or one without a file of its own takes the 224
      file; conv weights do not depend on the input size, so they load all the same, and `note`
      then says which file stands in (else None).

    Raises:
      ValueError: Keras publishes no weights for `alpha`; the message names the widths it does.
    """
    alpha = float(alpha)
    if alpha not in IMAGENET_SIZES:
        published = ", ".join(f"{a:g}" for a in IMAGENET_SIZES)
        raise ValueError(f"keras.applications publishes MobileNetV2 ImageNet weights for alpha "
                         f"{published}, not {alpha:g}")
    h, w = (int(s) for s in input_size)
    rows, note = h, None
    if h != w or h not in IMAGENET_SIZES[alpha]:
        rows = 224
        note = (f"no ImageNet weights trained at {h}x{w} for MobileNetV2 alpha {alpha:g} (Keras "
                f"publishes {', '.join(str(s) for s in IMAGENET_SIZES[alpha])} px, square); "
                f"using the 224 px file, as keras.applications does: conv weights do not depend "
                f"on the input size")
    # Keras formats alpha with float(): 0.35, 0.5, 1.0 ("..._1.0_224_no_top.h5").
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5", note


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% down (keras.applications)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@dataclass(frozen=True)
class Block:
    """One inverted residual block as built: channels, stride and dilation."""

    block_id: int
    prefix: str            # "expanded_conv_" for block 0, else "block_{id}_"
    in_channels: int
    expanded: int          # channels after the 1x1 expansion (== in_channels when t == 1)
    out_channels: int
    stride: int            # 1 or 2 after output-stride handling
    rate: int              # dilation of the 3x3 depthwise
    residual: bool
    input_stride: int      # stride of the block's input relative to the image
    output_stride: int     # stride of the block's output


def first_channels(alpha: float) -> int:
    return make_divisible(32 * alpha, 8)


def last_channels(alpha: float) -> int:
    # The final 1x1 conv keeps 1280 channels for alpha <= 1 (paper, Table 2 note).
    return make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280


def block_plan(alpha: float = 1.0, output_stride: int = 32) -> list[Block]:
    """The 17 inverted residual blocks for this width and output stride.

    Output stride by dilation (docs/paper.md, DeepLab): once the running stride equals
    `output_stride`, a block that would downsample keeps stride 1 and multiplies the dilation rate
    by its stride; it and every later block use that rate. OS 16: blocks 13-16 use rate 2.
    OS 8: blocks 6-12 rate 2, blocks 13-16 rate 4.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    blocks = []
    in_ch = first_channels(alpha)
    current, rate = 2, 1  # after Conv1
    block_id = 0
    for t, c, n, s in STAGES:
        out_ch = make_divisible(c * alpha, 8)
        for i in range(n):
            stride = s if i == 0 else 1
            in_stride = current
            if stride > 1 and current * stride > output_stride:
                rate *= stride
                stride = 1
            else:
                current *= stride
            prefix = "expanded_conv_" if block_id == 0 else f"block_{block_id}_"
            blocks.append(Block(block_id, prefix, in_ch, in_ch * t, out_ch, stride, rate,
                                stride == 1 and in_ch == out_ch, in_stride, current))
            in_ch = out_ch
            block_id += 1
    return blocks


def feature_specs(alpha: float = 1.0, output_stride: int = 32) -> dict[str, tuple[int, int]]:
    """Layer name -> (channels, stride) for every tappable activation of the backbone."""
    specs = {"Conv1_relu": (first_channels(alpha), 2)}
    for b in block_plan(alpha, output_stride):
        if b.block_id:
            specs[f"{b.prefix}expand_relu"] = (b.expanded, b.input_stride)
        specs[f"{b.prefix}depthwise_relu"] = (b.expanded, b.output_stride)
        specs[f"{b.prefix}project"] = (b.out_channels, b.output_stride)
        specs[f"{b.prefix}project_BN"] = (b.out_channels, b.output_stride)
        if b.residual:
            specs[f"{b.prefix}add"] = (b.out_channels, b.output_stride)
    final = block_plan(alpha, output_stride)[-1].output_stride
    specs["out_relu"] = (last_channels(alpha), final)
    return specs


def _bn(momentum: float, name: str):
    return BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=momentum, name=name)


def _inverted_residual(x, b: Block, momentum: float, reg):
    """Table 1: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 projection."""
    inputs = x
    p = b.prefix
    if b.block_id:
        x = Conv2D(b.expanded, 1, padding="same", use_bias=False,
                   kernel_regularizer=reg, name=f"{p}expand")(x)
        x = _bn(momentum, f"{p}expand_BN")(x)
        x = layers.ReLU(6.0, name=f"{p}expand_relu")(x)
    if b.stride == 2:
        # keras.applications pads explicitly (one pixel more at the bottom/right for even sizes).
        h, w = x.shape[1] or 0, x.shape[2] or 0
        pad = ((h % 2, 1), (w % 2, 1))
        x = layers.ZeroPadding2D(pad, name=f"{p}pad")(x)
        x = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False,
                                   name=f"{p}depthwise")(x)
    else:
        x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=b.rate, use_bias=False,
                                   name=f"{p}depthwise")(x)
    x = _bn(momentum, f"{p}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{p}depthwise_relu")(x)
    # Linear bottleneck: no activation after the projection (paper, section 3.2).
    x = Conv2D(b.out_channels, 1, padding="same", use_bias=False,
               kernel_regularizer=reg, name=f"{p}project")(x)
    x = _bn(momentum, f"{p}project_BN")(x)
    if b.residual:
        x = layers.Add(name=f"{p}add")([inputs, x])
    return x


def mobilenet_v2(input_shape=(224, 224, 3), alpha: float = 1.0, output_stride: int = 32,
                 taps=DEFAULT_TAPS, bn_momentum: float = 0.999, weight_decay: float = 0.0,
                 name: str = "mobilenet_v2") -> keras.Model:
    """Build the backbone.

    Args:
      input_shape: (H, W, 3); H and W multiples of 32 (any size, not only 224).
      alpha: width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4 in the paper and keras.applications).
      output_stride: 8, 16 or 32, reached by dilation (never by resizing).
      taps: layer names whose outputs the model returns. Layers after the last tap are not built,
        so a head on `block_16_project` carries no 1280-channel conv.
      bn_momentum: BatchNorm moving-average momentum (0.999 as keras.applications).
      weight_decay: L2 on 1x1/3x3 conv kernels, TF-slim scale (loss += wd/2 * sum(w^2)); depthwise
        kernels are not decayed, as in the reference implementation.

    Returns:
      keras.Model from uint8 or float RGB pixels (N, H, W, 3) in 0..255 to a dict
      {tap name: (N, H/stride, W/stride, channels)}.
    """
    specs = feature_specs(alpha, output_stride)
    unknown = [t for t in taps if t not in specs]
    if unknown:
        raise ValueError(f"unknown feature taps {unknown}; available: {sorted(specs)}")
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None

    image = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(image)
    x = Conv2D(first_channels(alpha), 3, strides=2, padding="same", use_bias=False,
               kernel_regularizer=reg, name="Conv1")(x)
    x = _bn(bn_momentum, "bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    outputs = {}
    for b in block_plan(alpha, output_stride):
        x = _inverted_residual(x, b, bn_momentum, reg)
    x = Conv2D(last_channels(alpha), 1, use_bias=False, kernel_regularizer=reg,
               name="Conv_1")(x)
    x = _bn(bn_momentum, "Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    full = keras.Model(image, x)
    for tap in taps:
        outputs[tap] = full.get_layer(tap).output
    # A functional model keeps only the layers its outputs need: truncation comes for free.
    return keras.Model(image, outputs, name=name)
