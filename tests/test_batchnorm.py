"""mobilevision.batchnorm.BatchNormalization trains with TensorFlow's fused kernel and must give
what keras.layers.BatchNormalization gives: outputs, moving statistics and gradients to float32
rounding, in training and inference, and load the same weights."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from mobilevision.batchnorm import BatchNormalization


def _pair(channels, **kwargs):
    ours, theirs = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    shape = (None, None, None, channels)
    ours.build(shape)
    theirs.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]
    if not kwargs.get("scale", True):
        weights = weights[1:]
    if not kwargs.get("center", True):
        weights = weights[:-3] + weights[-2:]
    for layer in (ours, theirs):
        layer.set_weights([w.astype("float32") for w in weights])
    return ours, theirs


def _grads(layer, x, upstream, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    gx, gg, gb = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y.numpy(), gx.numpy(), gg.numpy(), gb.numpy()


@pytest.mark.parametrize("kwargs", [dict(epsilon=1e-3, momentum=0.9),
                                    dict(epsilon=1e-5, momentum=0.9997),
                                    dict(epsilon=1e-3, momentum=0.99, center=False, scale=False)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_keras_layer_outputs_statistics_and_gradients(kwargs, training):
    channels = 24
    ours, theirs = _pair(channels, **kwargs)
    rng = np.random.default_rng(0)
    # Shifted and scaled, as activations are: the statistics are not 0/1.
    x = (3.0 * rng.normal(size=(4, 9, 7, channels)) + 1.5).astype("float32")
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    if not (kwargs.get("center", True) and kwargs.get("scale", True)):
        y_ours, y_theirs = ours(x, training=training), theirs(x, training=training)
        np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    else:
        a = _grads(ours, x, upstream, training)
        b = _grads(theirs, x, upstream, training)
        for name, u, v in zip(("output", "d input", "d gamma", "d beta"), a, b):
            scale = max(1.0, float(np.abs(v).max()))
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=2e-5 * scale, err_msg=name)
    for u, v in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)  # moving statistics updated alike


def test_gradient_matches_numerical_derivative():
    """The fused kernel's gradient against finite differences in float64 terms: catches a
    gradient that merely agrees with Keras' by sharing a mistake."""
    ours, _ = _pair(3, epsilon=1e-3)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 3, 3)).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")

    def f(v):
        return float(tf.reduce_sum(ours(tf.constant(v), training=True) * w))

    ours.trainable = True
    _, gx, _, _ = _grads(ours, x, tf.constant(w), True)
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (1, 2, 1, 2), (0, 1, 2, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (f(plus) - f(minus)) / (2 * eps)
        assert gx[idx] == pytest.approx(numeric, rel=2e-2, abs=2e-3)


def test_bfloat16_activations_train_in_float32_statistics():
    ours = BatchNormalization(dtype="mixed_bfloat16")
    theirs = keras.layers.BatchNormalization(dtype="mixed_bfloat16")
    x = tf.cast(tf.random.stateless_normal((4, 8, 8, 16), (0, 1)) * 2.0 + 1.0, tf.bfloat16)
    y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
    assert y_ours.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_ours, tf.float32), tf.cast(y_theirs, tf.float32),
                               atol=0.05)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), rtol=1e-2,
                               atol=1e-3)


def test_same_weights_names_and_config_round_trip():
    ours, theirs = _pair(8, epsilon=1e-3, momentum=0.9, name="block_1_expand_BN")
    assert [w.path for w in ours.weights] == [w.path for w in theirs.weights]
    clone = BatchNormalization.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()
    # A model saved with the layer reloads with it (registered serializable).
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, BatchNormalization(name="bn")(inputs))
    restored = keras.Model.from_config(model.get_config())
    assert isinstance(restored.get_layer("bn"), BatchNormalization)


def test_upstream_layer_still_unfused():
    """This module exists because Keras 3's layer trains through separate moments and
    normalization ops (keras-team/keras-core#225). When Keras' own training graph holds the
    fused kernel, this test fails: drop mobilevision.batchnorm and use Keras' layer."""
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4, 4, 8))
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec((2, 4, 4, 8), tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}, ops
