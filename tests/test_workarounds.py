"""The Keras workarounds (mobilevision/workarounds.py), each with a test that fails the day
upstream fixes what it works around:

- BatchNormalization trains with TensorFlow's fused kernel and must give what
  keras.layers.BatchNormalization gives: outputs, moving statistics and gradients to float32
  rounding, in training and inference, and load the same weights;
- patch_fit makes `fit` of a model built under a strategy train on the dataset's first order,
  and is applied only to such models;
- Conv2D trains a 1x1 kernel as a MatMul where it should, and must give what keras.layers.Conv2D
  gives: outputs and gradients to float32 rounding, the same weights, names and config."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from mobilevision.workarounds import BatchNormalization, Conv2D, fit_fixes, patch_fit


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
@pytest.mark.parametrize("formulation", ["written", "fused"])
def test_matches_keras_layer_outputs_statistics_and_gradients(kwargs, training, formulation,
                                                              monkeypatch):
    """Both training formulations (which one a machine takes depends on TensorFlow's oneDNN
    ops: `_train_formulation`), forced here through $MOBILEVISION_BATCH_NORM."""
    monkeypatch.setenv("MOBILEVISION_BATCH_NORM", formulation)
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
    fused kernel, this test fails: drop workarounds.BatchNormalization and use Keras' layer."""
    layer = keras.layers.BatchNormalization()
    layer.build((None, 4, 4, 8))
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec((2, 4, 4, 8), tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}, ops


# patch_fit -------------------------------------------------------------------------------------


class Recorder(keras.Model):
    """A one-weight model whose train step records the batch it was given."""

    def __init__(self):
        super().__init__(name="recorder")
        self.dense = keras.layers.Dense(1)
        self.seen = self.add_weight(shape=(4, 1), initializer="zeros", trainable=False,
                                    name="seen")

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, _ = data
        self.seen.assign(tf.cast(x, "float32"))
        return {"loss": tf.constant(0.0)}


def _first_trained_batch(patched: bool):
    """-> (the batch `fit`'s first step trained on, the first batch of the dataset's first
    epoch): a seeded dataset that reshuffles each epoch, as every training pipeline here, and a
    model built under a one-device MirroredStrategy (Keras records a strategy for it)."""
    def dataset():
        ds = tf.data.Dataset.range(16).shuffle(16, seed=0, reshuffle_each_iteration=True)
        return ds.map(lambda i: (tf.fill([1], tf.cast(i, tf.float32)), 0.0)).batch(4)

    first = next(iter(dataset()))[0].numpy().ravel()  # a dataset's first iteration: its order
    ds = dataset()
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = Recorder()
        model.compile(optimizer="sgd")
    assert fit_fixes(model) == ["symbolic_build"]
    if patched:
        assert patch_fit(model) == ["symbolic_build"]
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    return model.seen.numpy().ravel(), first


def test_upstream_fit_still_draws_a_batch_before_training():
    """keras-team/keras#20585 (and Trainer._maybe_symbolic_build): Keras' `fit` of a model built
    under a strategy draws one batch from a fresh iterator to build it, so training starts on
    the dataset's second order. When this fails, Keras no longer does that: drop the
    "symbolic_build" part of workarounds.patch_fit."""
    trained, first = _first_trained_batch(patched=False)
    assert not np.array_equal(trained, first), "Keras trained on the first order: fixed upstream"


def test_patched_fit_trains_on_the_first_order_and_only_where_needed():
    trained, first = _first_trained_batch(patched=True)
    np.testing.assert_array_equal(trained, first)
    plain = Recorder()  # no strategy: Keras draws nothing, so nothing is patched
    assert fit_fixes(plain) == [] and patch_fit(plain) == []
    assert "_maybe_symbolic_build" not in vars(plain)


MULTI_WORKER_FIT = r"""
import json, os, sys
index, ports, fixes = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np
import tensorflow as tf
from mobilevision.workarounds import patch_fit
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
patch_fit(model, [f for f in fixes.split(",") if f])
ds = tf.data.Dataset.from_tensor_slices((np.ones((16, 4), np.float32),
                                         np.ones((16, 1), np.float32))).batch(4).repeat()
try:
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    print("fit: ok")
except ValueError as e:
    print("fit: " + str(e).replace("\n", " ")[:300])
"""


def test_upstream_multi_worker_fit_still_fails_without_the_patch(tmp_path):
    """keras-team/keras#20585: under MultiWorkerMirroredStrategy (two workers on 127.0.0.1),
    plain `fit` fails reducing the batch it draws to build the model, and with that part fixed
    it fails reducing the scalar metrics on axis 0. When either plain run fits, Keras fixed
    that bug: drop the matching part of workarounds.patch_fit. (Both parts together train:
    tests/tasks/test_distribute.py.)"""
    import socket
    import subprocess
    import sys

    expected = {"": "PerReplica", "symbolic_build": "Invalid reduction dimension 0"}
    procs = {}
    for fixes in expected:
        socks = [socket.socket() for _ in range(2)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = ",".join(str(s.getsockname()[1]) for s in socks)
        for s in socks:
            s.close()
        procs[fixes] = [subprocess.Popen([sys.executable, "-c", MULTI_WORKER_FIT, str(i), ports,
                                          fixes], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True) for i in (0, 1)]
    for fixes, workers in procs.items():
        for proc in workers:
            out, _ = proc.communicate(timeout=300)
            line = next((x for x in out.splitlines() if x.startswith("fit: ")), out[-300:])
            assert expected[fixes] in line, (fixes or "no fixes", line)


def test_written_out_gradient_matches_tensorflows_fused_kernel_in_a_graph():
    """The float32 training path's custom gradient (as `fit` runs it, in a tf.function, whether
    or not this machine's layer takes that path) against TensorFlow's own fused batch-norm
    kernel and its gradient, on an activation-sized input; the batch statistics too."""
    from mobilevision.workarounds import _batch_norm_train

    rng = np.random.default_rng(1)
    x = tf.constant((2.0 * rng.normal(size=(8, 20, 20, 32)) - 0.7).astype("float32"))
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    gamma = tf.constant(rng.uniform(0.5, 1.5, 32).astype("float32"))
    beta = tf.constant(rng.normal(size=32).astype("float32"))

    def run(bn):
        @tf.function
        def step(x, gamma, beta):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                y, mean, variance = bn(x, gamma, beta)
                loss = tf.reduce_sum(y * upstream)
            return (y, mean, variance, *tape.gradient(loss, [x, gamma, beta]))
        return step(x, gamma, beta)

    ours = run(lambda x, g, b: _batch_norm_train(x, g, b, 1e-3))
    fused = run(lambda x, g, b: tf.compat.v1.nn.fused_batch_norm(x, g, b, epsilon=1e-3,
                                                                 is_training=True))
    n = 8 * 20 * 20
    fused = (fused[0], fused[1], fused[2] * (n - 1) / n, *fused[3:])  # the kernel's is unbiased
    names = ("output", "mean", "variance", "d input", "d gamma", "d beta")
    for name, u, v in zip(names, ours, fused):
        scale = max(1.0, float(np.abs(v).max()))
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=2e-5 * scale, err_msg=name)


def test_batch_norm_formulation_follows_onednn_unless_named(monkeypatch):
    from mobilevision import workarounds

    monkeypatch.delenv("MOBILEVISION_BATCH_NORM", raising=False)
    expected = "fused" if workarounds._onednn_ops() else "written"
    assert workarounds._train_formulation() == expected
    layer = BatchNormalization()
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32"))

    def op_types():  # of the training-mode call, traced afresh
        graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    for name, present, absent in [("written", "IdentityN", "FusedBatchNormV3"),  # custom gradient
                                  ("fused", "FusedBatchNormV3", "IdentityN"),
                                  ("keras", "SquaredDifference", "FusedBatchNormV3")]:
        monkeypatch.setenv("MOBILEVISION_BATCH_NORM", name)
        types = op_types()
        assert present in types and absent not in types, (name, sorted(types))
    monkeypatch.setenv("MOBILEVISION_BATCH_NORM", "fast")
    with pytest.raises(ValueError, match=r"\$MOBILEVISION_BATCH_NORM='fast': expected one of "
                                         r"auto, written, fused, keras"):
        layer(x, training=True)


def test_import_sets_tensorflows_speed_settings_unless_the_user_did():
    """`import mobilevision` turns TensorFlow's oneDNN ops on (x86-64) and its caching allocator
    on where those ops are off, before TensorFlow is imported, and keeps what the user set."""
    import os
    import platform
    import subprocess
    import sys

    code = ("import os, sys, mobilevision; assert 'tensorflow' not in sys.modules; "
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), "
            "os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'))")
    base = {k: v for k, v in os.environ.items()
            if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}

    def settings(**env):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env},
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert settings() == (["1", "None"] if x86 else ["None", "true"])
    assert settings(TF_ENABLE_ONEDNN_OPTS="0") == ["0", "true"]
    assert settings(TF_ENABLE_ONEDNN_OPTS="0", TF_CPU_ALLOCATOR_USE_BFC="false") == ["0", "false"]
    assert settings(TF_ENABLE_ONEDNN_OPTS="1", TF_CPU_ALLOCATOR_USE_BFC="true") == ["1", "true"]


# Conv2D -----------------------------------------------------------------------------------------


def _conv_op_types(layer, x, training):
    graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("kwargs", [dict(use_bias=False),
                                    dict(use_bias=True, activation="relu6"),
                                    dict(use_bias=True, padding="valid", dtype="float32")])
def test_conv2d_1x1_trains_as_a_matmul_with_keras_outputs_and_gradients(kwargs, monkeypatch):
    """Forced on (`matmul`), as where the oneDNN ops are: the training graph holds a MatMul and
    no convolution, and its outputs and gradients (input, kernel, bias) are Keras' Conv2D's; in
    inference it is the convolution itself."""
    monkeypatch.setenv("MOBILEVISION_CONV1X1", "matmul")
    ours, theirs = Conv2D(24, 1, **kwargs), keras.layers.Conv2D(24, 1, **kwargs)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(3, 7, 5, 16)).astype("float32"))
    ours.build(x.shape)
    theirs.build(x.shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in theirs.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    upstream = tf.constant(rng.normal(size=(3, 7, 5, 24)).astype("float32"))

    def step(layer, training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=training) * upstream)
        return [layer(x, training=training), *tape.gradient(loss, [x, *layer.trainable_weights])]

    types = _conv_op_types(ours, x, True)
    assert "MatMul" in types and "Conv2D" not in types, sorted(types)
    assert "Conv2D" in _conv_op_types(ours, x, False)
    for training in (True, False):
        for u, v in zip(step(ours, training), step(theirs, training)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_conv2d_keeps_the_convolution_where_it_should(monkeypatch):
    """Other kernels and strides, and `conv` named, train as Keras' convolution; `auto` follows
    whether TensorFlow's oneDNN ops are on; an unknown value is an error naming the variable."""
    from mobilevision import workarounds

    x = tf.zeros((2, 8, 8, 4))
    monkeypatch.setenv("MOBILEVISION_CONV1X1", "matmul")
    for layer in (Conv2D(8, 3, padding="same"), Conv2D(8, 1, strides=2), Conv2D(8, 1, groups=2)):
        assert "MatMul" not in _conv_op_types(layer, x, True), layer.get_config()
    monkeypatch.setenv("MOBILEVISION_CONV1X1", "conv")
    assert "Conv2D" in _conv_op_types(Conv2D(8, 1), x, True)
    monkeypatch.setenv("MOBILEVISION_CONV1X1", "auto")
    matmul = "MatMul" in _conv_op_types(Conv2D(8, 1), x, True)
    assert matmul == workarounds._onednn_ops()
    monkeypatch.setenv("MOBILEVISION_CONV1X1", "gemm")
    with pytest.raises(ValueError, match=r"\$MOBILEVISION_CONV1X1='gemm': expected one of "
                                         r"auto, matmul, conv"):
        Conv2D(8, 1)(x, training=True)


def test_conv2d_same_weights_names_and_config_round_trip():
    ours, theirs = Conv2D(8, 1, name="block_1_expand"), keras.layers.Conv2D(8, 1,
                                                                           name="block_1_expand")
    ours.build((None, 4, 4, 3))
    theirs.build((None, 4, 4, 3))
    assert [(w.path, w.shape) for w in ours.weights] == [(w.path, w.shape) for w in theirs.weights]
    assert Conv2D.from_config(ours.get_config()).get_config() == ours.get_config()
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, Conv2D(8, 1, name="conv")(inputs))
    restored = keras.Model.from_config(model.get_config())
    assert isinstance(restored.get_layer("conv"), Conv2D)
