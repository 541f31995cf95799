"""BatchNormalization that trains with TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes its training-mode statistics and normalization from
separate ops (`tf.nn.moments`, then `tf.nn.batch_normalization`) on every backend, and their
gradient is a chain of elementwise ops (Mul, Sum, Tile, SquaredDifference, Sub) over every
activation. Keras 2 called TensorFlow's fused kernel instead (`FusedBatchNormV3`, oneDNN's on
CPU), whose forward and backward are each one op. Profiled on our SSDLite-320 train step
(benchmarks/op_profile.py, 2 CPU cores, batch 8), the unfused chain took about half of the step's
op time; see benchmarks/README.md. Upstream: keras-team/keras-core#225 ("BatchNorm is slow",
closed without restoring the fused kernel; Keras 3.15's layer still has no `fused` path).

`BatchNormalization` here is that layer with one change: under the TensorFlow backend, in
training mode, for a 4-D channels-last input without a mask, renorm or synchronized statistics,
it calls `tf.compat.v1.nn.fused_batch_norm`. Everything else (inference, other backends, masks,
`synchronized=True` under tf.distribute) is Keras' own code. The weights (gamma, beta,
moving_mean, moving_variance), their names and order, the moving-average update and the config
are Keras' own, so weight files and keras.applications weights load unchanged, and
`tests/test_batchnorm.py` checks outputs, statistics and gradients against Keras' layer to
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
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        # bfloat16 / float16 activations go in as they are: the kernel keeps its statistics
        # and scale in float32 (Keras' own layer casts the whole activation to float32).
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
