"""The Keras workarounds, in one place: each is small, names the upstream issue, runs only where
it is needed, and `tests/test_workarounds.py` holds a test per workaround that fails the day
upstream behaves (so the workaround can go).

1. `BatchNormalization`: Keras 3 trains BatchNorm through a chain of unfused ops
   (keras-team/keras-core#225); this layer trains with TensorFlow's fused kernel (where its
   oneDNN ops are on, and in bfloat16 / float16) or a written-out gradient (float32 elsewhere).
2. `patch_fit`: Keras' `fit` of a model built under a tf.distribute strategy draws one batch
   from a fresh iterator before training (so a seeded, reshuffled dataset starts on its second
   order), and under MultiWorkerMirroredStrategy reduces nested batches and scalar metrics in
   ways the collective strategy cannot (keras-team/keras#20585). Applied per model, and only
   the parts that model's strategy needs (`fit_fixes`).
3. `Conv2D`: TensorFlow's oneDNN convolution runs a 1x1 kernel as a direct convolution,
   slower than one matrix product on the small maps these models train on (oneDNN#437); this
   layer trains a 1x1, stride-1 kernel as that matrix product where the oneDNN ops are on.

BatchNormalization
------------------
BatchNormalization that trains with TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes its training-mode statistics and normalization from
separate ops (`tf.nn.moments`, then `tf.nn.batch_normalization`) on every backend, and their
gradient is a chain of elementwise ops (Mul, Sum, Tile, SquaredDifference, Sub) over every
activation. Keras 2 called TensorFlow's fused kernel instead (`FusedBatchNormV3`, oneDNN's or
TensorFlow's own on CPU), whose forward and backward are each one op. Profiled on our SSDLite-320 train step
(TensorFlow's op profiler, 2 CPU cores, batch 8), the unfused chain took about half of the step's
op time; see benchmarks/README.md. Upstream: keras-team/keras-core#225 ("BatchNorm is slow",
closed without restoring the fused kernel; Keras 3.15's layer still has no `fused` path).

`BatchNormalization` here is that layer with one change: under the TensorFlow backend, in
training mode, for a 4-D channels-last input without a mask, renorm or synchronized statistics,
it trains with `tf.compat.v1.nn.fused_batch_norm` where TensorFlow's oneDNN ops are on (oneDNN's
kernel: on by default on x86-64, since `import mobilevision` sets TF_ENABLE_ONEDNN_OPTS=1) and for
bfloat16 and float16 activations; otherwise, in float32, it computes the batch statistics and the
normalization as one scale and shift per channel, with its gradient written out
(`_batch_norm_train`, a `tf.custom_gradient`: dx = dy * scale + x * c1 + c0 after two
per-channel sums, d gamma and d beta from the same sums), which beats TensorFlow's own Eigen fused
kernel. The 76 BatchNorm layers of SSDLite-320 at batch 8, forward + backward, 2 cores of an AMD
EPYC Zen 5 (benchmarks/README.md): oneDNN's fused kernel 122 ms (AVX-512) and 147 ms (held to
AVX2); with the oneDNN ops off, the written-out form 258 ms, the Eigen fused kernel 289, Keras'
chain 402. $MOBILEVISION_BATCH_NORM (written, fused or keras) forces one, for measuring
(`_train_formulation`). Everything else (inference, other backends, masks,
`synchronized=True` under tf.distribute) is Keras' own code. The weights (gamma, beta,
moving_mean, moving_variance), their names and order, the moving-average update and the config
are Keras' own, so weight files and keras.applications weights load unchanged, and
`tests/test_workarounds.py` checks outputs, statistics and gradients against Keras' layer to
float32 rounding.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="mobilevision")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (same arguments, weights and results) that trains
    with TensorFlow's fused kernel where it can (see the module docstring)."""

    def _fusable(self, inputs, training, mask) -> bool:
        return (bool(training) and self.trainable and mask is None
                and keras.backend.backend() == "tensorflow"
                and not self.synchronized and not self.renorm
                and len(inputs.shape) == 4 and self.axis in (-1, 3, [3], [-1]))

    def call(self, inputs, training=None, mask=None):
        formulation = _train_formulation() if self._fusable(inputs, training, mask) else "keras"
        if formulation == "keras":
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        if x.dtype == tf.float32 and formulation == "written":
            y, mean, variance = _batch_norm_train(x, tf.cast(gamma, tf.float32),
                                                  tf.cast(beta, tf.float32), self.epsilon)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
            return tf.cast(y, self.compute_dtype)
        # bfloat16 / float16 activations go in as they are to TensorFlow's own kernel, which
        # keeps its statistics and scale in float32; oneDNN's takes float32 (its 16-bit kernels
        # need ISA support that ONEDNN_MAX_CPU_ISA can withhold: "could not create a primitive
        # descriptor"), as Keras' own layer casts the whole activation to float32.
        if x.dtype != tf.float32 and _onednn_ops():
            x = tf.cast(x, tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance (for running averages); Keras'
        # layer averages the biased one, which is what the normalization itself used.
        n = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


BATCH_NORM_ENV = "MOBILEVISION_BATCH_NORM"
BATCH_NORM_FORMULATIONS = ("auto", "written", "fused", "keras")


def _train_formulation() -> str:
    """How a float32 BatchNorm trains under TensorFlow: `written` (the written-out gradient) or
    `fused` (FusedBatchNormV3) as `_onednn_ops` picks, unless $MOBILEVISION_BATCH_NORM names one
    of BATCH_NORM_FORMULATIONS (`keras`: Keras' own unfused layer), which the benchmarks use to
    compare them on one machine. Read when a train step is traced."""
    import os

    value = os.environ.get(BATCH_NORM_ENV, "auto").strip().lower() or "auto"
    if value not in BATCH_NORM_FORMULATIONS:
        raise ValueError(f"${BATCH_NORM_ENV}={value!r}: expected one of "
                         f"{', '.join(BATCH_NORM_FORMULATIONS)}")
    if value == "auto":
        return "fused" if _onednn_ops() else "written"
    return value


def _onednn_ops() -> bool:
    """Whether TensorFlow runs its oneDNN ops in this process (TF_ENABLE_ONEDNN_OPTS, on by default
    only on CPUs with AVX-512 VNNI / BF16 or AMX): then FusedBatchNormV3 is oneDNN's kernel, which
    is what the fused path was measured fastest with; otherwise it is TensorFlow's Eigen kernel,
    which the written-out gradient beats."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without it: assume the default x86 build, oneDNN off
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def _batch_norm_train(x, gamma, beta, epsilon):
    """Training-mode batch norm of a float32 NHWC `x` -> (y, batch mean, biased batch variance),
    with its gradient written out (see the module docstring): the forward is one scale and shift
    per channel, the backward two per-channel sums over dy and dy * x and one pass
    dx = dy * scale + x * c1 + c0, without the normalized activation kept for it."""
    import tensorflow as tf

    channels = x.shape[-1]

    @tf.custom_gradient
    def bn(x, gamma, beta):
        x2 = tf.reshape(x, [-1, channels])
        n = tf.cast(tf.shape(x2)[0], tf.float32)
        mean = tf.reduce_mean(x2, 0)
        variance = tf.reduce_mean(tf.math.squared_difference(x2, mean), 0)
        inv = tf.math.rsqrt(variance + epsilon)
        scale = gamma * inv
        y = x * scale + (beta - mean * scale)

        def grad(dy, dmean, dvariance):
            with tf.name_scope("batch_norm_grad"):  # named for op profiles
                dy2 = tf.reshape(dy, [-1, channels])
                sum_dy = tf.reduce_sum(dy2, 0)
                sum_dy_xhat = (tf.reduce_sum(dy2 * x2, 0) - mean * sum_dy) * inv
                c1 = -scale * inv * sum_dy_xhat / n
                c0 = -scale * sum_dy / n - c1 * mean
                return dy * scale + (x * c1 + c0), sum_dy_xhat, sum_dy

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return bn(x, gamma, beta)


@keras.saving.register_keras_serializable(package="mobilevision")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same arguments, weights, names and results) that, in training
    under TensorFlow with its oneDNN ops on, computes a 1x1, stride-1, ungrouped kernel as one
    matrix product: (N*H*W, C) @ (C, filters).

    Why: TensorFlow hands a Conv2D to oneDNN's convolution, which runs a 1x1 kernel as a direct
    convolution with a per-call set-up that costs more than the work on small maps
    (uxlfoundation/oneDNN#437, "slow speed in 1*1 small dense convolution": a GEMM twice as fast
    for a 16-channel 60 x 60 map). A MatMul, and its gradient (two MatMuls), go to oneDNN's GEMM
    instead. Measured on the three demos' train steps (2 cores, AMD EPYC Zen 4, one process,
    alternating; benchmarks/README.md): 0.93x the step time of the detector, 0.87x the
    classifier's, 0.91-0.95x the segmenter's, and about the same held to AVX2. TensorFlow's own
    (Eigen) Conv2D already computes a 1x1 kernel as a contraction, so with the oneDNN ops off,
    under other backends, for any other kernel, and in inference (predict, evaluation and every
    export, which keep the convolution apps run) this is Keras' own `call`. No test can show
    upstream making the convolution as fast (a speed, not a behaviour): `benchmarks/op_profile.py`
    lists the 1x1 convolutions' share of a step, and `$MOBILEVISION_CONV1X1=conv` turns this
    off for measuring (`_conv1x1_as_matmul`)."""

    def _as_matmul(self, inputs, training) -> bool:
        return (bool(training) and self.rank == 2 and tuple(self.kernel_size) == (1, 1)
                and tuple(self.strides) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last" and len(inputs.shape) == 4
                and keras.backend.backend() == "tensorflow" and _conv1x1_as_matmul())

    def call(self, inputs, training=None):
        if not self._as_matmul(inputs, training):
            return super().call(inputs)
        from keras import ops

        shape = ops.shape(inputs)
        kernel = ops.reshape(self.kernel, self.kernel.shape[2:])
        y = ops.matmul(ops.reshape(inputs, (-1, shape[-1])), kernel)
        if self.use_bias:
            y = ops.add(y, self.bias)
        y = ops.reshape(y, (*shape[:-1], self.filters))
        return self.activation(y)


CONV1X1_ENV = "MOBILEVISION_CONV1X1"


def _conv1x1_as_matmul() -> bool:
    """Whether `Conv2D` trains a 1x1 kernel as a MatMul: where TensorFlow's oneDNN ops are on,
    unless $MOBILEVISION_CONV1X1 says `conv` (or `matmul`, to force it). Read when a train step
    is traced."""
    import os

    value = os.environ.get(CONV1X1_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "matmul", "conv"):
        raise ValueError(f"${CONV1X1_ENV}={value!r}: expected one of auto, matmul, conv")
    return _onednn_ops() if value == "auto" else value == "matmul"


def fit_fixes(model) -> list[str]:
    """The parts of `patch_fit` that `model` needs: "symbolic_build" when Keras' `fit` would
    draw a batch to build it (a model created under a tf.distribute strategy's scope: Keras
    records a strategy only then), and "scalar_metrics" under multi-worker collectives as well."""
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None:
        return []
    fixes = ["symbolic_build"]
    if bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)()):
        fixes.append("scalar_metrics")
    return fixes


def patch_fit(model, fixes=None) -> list[str]:
    """Make `fit` of a model built under a multi-replica strategy behave as on one device.

    1. Before training, Keras' `fit` builds a distributed model's metrics from one batch that it
       draws from a new iterator over the training data. With a seeded, reshuffled dataset that
       iterator takes the first epoch's order, so training starts on the second one and the
       losses differ from a single-device run. The shapes are in the dataset's element spec:
       build from those, and iterate nothing.
    2. Under MultiWorkerMirroredStrategy two Keras 3 bugs stop `fit` (keras-team/keras#20585,
       open as of Keras 3.15): that batch is reduced with `strategy.reduce(MEAN, (x, y))`,
       which the collective strategy cannot do for a nested structure (fixed by 1), and each
       step's metrics with `strategy.reduce(MEAN, scalar, axis=0)`, which fails on scalars. The
       metrics are already synchronized across workers, so giving them a leading axis of 1
       makes that a mean of equal values.

    The fixes are set on this model instance only, and only those it needs (`fit_fixes`; a
    test names `fixes` to apply fewer). Returns their names."""
    import types

    fixes = fit_fixes(model) if fixes is None else list(fixes)
    if not fixes:
        return fixes
    strategy = model.distribute_strategy

    def as_symbolic(spec):
        # Data from `distribute_datasets_from_function` on a worker with several replicas is
        # specified per replica; every replica's spec is the same.
        spec = getattr(spec, "_value_specs", (spec,))[0]
        return keras.KerasTensor((None, *spec.shape[1:]), spec.dtype.name)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if data_batch is None and iterator is not None:
            spec = iterator.data_adapter.get_tf_dataset().element_spec
            data_batch = keras.tree.map_structure(as_symbolic, spec)
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    object.__setattr__(model, "_maybe_symbolic_build", types.MethodType(maybe_symbolic_build, model))
    if "scalar_metrics" in fixes:
        def with_axis(step):
            def wrapped(data):
                return {k: keras.ops.expand_dims(v, 0) for k, v in step(data).items()}
            return wrapped

        object.__setattr__(model, "train_step", with_axis(model.train_step))
        object.__setattr__(model, "test_step", with_axis(model.test_step))
    return fixes
