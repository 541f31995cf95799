"""Where a train step's time goes, by layer type, and what the step spends beyond the layers.

    from step_profile import layer_profile
    prof = layer_profile(model, images, step_ms)   # step_ms: the measured train step, ms

Every leaf layer of `model` (nested models are opened) is timed on its own, on the inputs it gets
from `images` in the model: forward alone and forward + backward (gradients for its inputs and
its trainable weights), each in a tf.function, in training mode, median of `runs` calls. The
times are summed by layer type (1x1 and 3x3 convolutions apart, depthwise, BatchNormalization,
ReLU6, ...). Their sum is what the network itself costs; the measured step minus that sum is
what the step adds beyond the layers: loss, hard negative mining, weight decay, the optimizer
update, moving statistics, Keras' train loop and callbacks. Layers timed alone lose the overlap
that running ops side by side gives the real step, so on 2 cores the sum can exceed the step; it
is a split, not an exact account.

(TensorFlow's profiler, `tf.profiler.experimental`, was tried first: with TF 2.21 on CPU its
trace of a Keras train step held op-level events in one run and only `ExecutorState::Process`
events in every later one, so it could not be relied on for a table; benchmarks/README.md keeps
the one op-level table it gave.)
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import time_calls  # noqa: E402


def _leaves(model, value):
    """[(layer, its input value)] for every leaf layer of `model` run eagerly on `value`: each
    leaf's `call` is wrapped for one forward pass to record what it receives."""
    import keras

    seen = []
    leaves = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if not layer._layers and not isinstance(layer, keras.layers.InputLayer)]
    for layer in leaves:
        def record(*args, _layer=layer, _call=layer.call, **kwargs):
            seen.append((_layer, args[0]))
            return _call(*args, **kwargs)
        object.__setattr__(layer, "call", record)
    try:
        model(value, training=False)
    finally:
        for layer in leaves:
            object.__delattr__(layer, "call")
    return seen


def layer_type(layer) -> str:
    """A row of the table: the class name, with the kernel size for convolutions."""
    name = type(layer).__name__
    if name == "Conv2D":
        k = layer.kernel_size
        return f"Conv2D {k[0]}x{k[1]}" + (" dilated" if max(layer.dilation_rate) > 1 else "")
    if name == "DepthwiseConv2D":
        return "DepthwiseConv2D" + (" stride 2" if max(layer.strides) > 1 else "")
    return name


def layer_profile(model, images, step_ms: float, runs: int = 5) -> dict:
    """Time every leaf layer of `model` on `images` (a batch) and split `step_ms`.

    Returns {"by_type": {type: {"forward_ms", "train_ms", "layers"}} (train = forward +
    backward), "layers_ms": sum of train_ms, "step_ms", "beyond_layers_ms": step - layers,
    "beyond_share": that over the step}, times per batch."""
    import tensorflow as tf

    rows = {}
    for layer, x in _leaves(model, images):
        xs = [tf.constant(v) for v in (x if isinstance(x, (list, tuple)) else [x])]
        weights = list(layer.trainable_weights)

        def forward(xs=xs, layer=layer):
            return layer(xs if len(xs) > 1 else xs[0], training=True)

        @tf.function
        def train(xs=xs, layer=layer, weights=weights):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                y = layer(xs if len(xs) > 1 else xs[0], training=True)
                # A fixed upstream gradient of ones: the backward pass's cost does not depend
                # on its values.
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            return tape.gradient(loss, xs + weights)

        fwd = tf.function(forward)
        f_ms = time_calls(lambda: fwd(), runs, warmup=2)["median_ms"]
        t_ms = time_calls(lambda: train(), runs, warmup=2)["median_ms"]
        row = rows.setdefault(layer_type(layer), {"forward_ms": 0.0, "train_ms": 0.0, "layers": 0})
        row["forward_ms"] += f_ms
        row["train_ms"] += t_ms
        row["layers"] += 1
    by_type = dict(sorted(rows.items(), key=lambda kv: -kv[1]["train_ms"]))
    total = sum(r["train_ms"] for r in by_type.values())
    return {"by_type": by_type, "layers_ms": total, "step_ms": step_ms,
            "beyond_layers_ms": step_ms - total, "beyond_share": (step_ms - total) / step_ms}


def format_layer_profile(name: str, prof: dict) -> list[str]:
    """Table lines: per layer type its forward and train (forward + backward) ms per batch and
    share of the step; then the layers' sum and what the step adds beyond them."""
    step = prof["step_ms"]
    lines = [f"{name}: train step {step:.0f} ms per batch; layers timed alone "
             f"(forward / forward+backward, ms, share of the step):"]
    for t, r in prof["by_type"].items():
        lines.append(f"    {t:<28} x{r['layers']:<3} {r['forward_ms']:7.1f} {r['train_ms']:8.1f}"
                     f"  {100 * r['train_ms'] / step:5.1f}%")
    lines.append(f"    {'sum of the layers':<32} {prof['layers_ms']:16.1f}  "
                 f"{100 * prof['layers_ms'] / step:5.1f}%")
    lines.append(f"    {'beyond the layers (loss, optimizer, loop)':<44} "
                 f"{prof['beyond_layers_ms']:5.1f}  {100 * prof['beyond_share']:5.1f}%")
    return lines


def use_keras_batchnorm(model) -> int:
    """Make every mobilevision BatchNormalization of `model` train through Keras' own
    (unfused) code, as `keras.layers.BatchNormalization` does; returns how many were switched.
    For measuring what the fused kernel gives; the weights are untouched."""
    from mobilevision.workarounds import BatchNormalization

    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, BatchNormalization):
            object.__setattr__(layer, "_fusable", lambda *args: False)
            count += 1
    return count


def plain_keras_ssdlite(size: int, alpha: float, num_classes: int, anchor_generator,
                        learning_rate: float = 0.004):
    """The same SSDLite network as a Keras user would assemble it without the toolkit:
    `keras.applications.MobileNetV2` (weights=None; its own Keras BatchNormalization), our
    SSDLite head layers on the same taps with Keras' BatchNormalization, and a plain compile:
    Huber on the box codes + sparse softmax cross-entropy on every anchor (no hard negative
    mining, no weight decay), RMSprop. Fits on the same (images, {"boxes", "classes"}) batches
    as ours (ignored anchors, class -1, count as background).

    Returns (compiled keras.Model, (h, w) of every map the head predicts on)."""
    import keras
    from keras import ops

    from mobilevision.heads.ssdlite import ssdlite_head

    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                              include_top=False, weights=None)
    image = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(image)
    taps = keras.Model(backbone.input, [backbone.get_layer(n).output
                                        for n in ("block_13_expand_relu", "out_relu")])(x)
    outputs, sizes = ssdlite_head(list(taps), num_classes, anchor_generator,
                                  depth_multiplier=alpha)
    model = keras.Model(image, outputs)
    use_keras_batchnorm(model)

    def classes_loss(y_true, y_pred):
        labels = ops.maximum(ops.cast(y_true, "int32"), 0)
        return keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)

    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate, momentum=0.9, epsilon=1.0),
                  loss={"boxes": keras.losses.Huber(), "classes": classes_loss},
                  jit_compile=False)
    return model, sizes
