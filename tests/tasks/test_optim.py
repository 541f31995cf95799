"""The optimizers of `train.optimizer`: `adam` and `adamw` apply each variable's update as
TensorFlow's fused ResourceApplyAdam (a smaller train step to trace, see mobilevision/tasks/optim.py);
they must move the weights and the slots exactly as Keras' own Adam and AdamW do, read and write
the same checkpoints, and do the same under a tf.distribute strategy."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import mobilevision as mv
from mobilevision.tasks.optim import Adam, AdamW, build_optimizer

SHAPES = [(3, 3, 8, 16), (16,), (1, 1, 16, 4), (4,)]


def _run(optimizer, steps: int = 6):
    """`steps` updates of four variables by the same seeded gradients, in a tf.function as the
    train step does; -> (variables, optimizer slots, the traced update's op types)."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    grads = [[tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]
             for _ in range(steps)]
    optimizer.build(variables)

    @tf.function
    def apply(g):
        optimizer.apply_gradients(zip(g, variables))

    for g in grads:
        apply(g)
    ops = {op.type for op in apply.get_concrete_function(grads[0]).graph.get_operations()}
    slots = [np.array(v) for v in optimizer._momentums + optimizer._velocities]
    return [np.array(v) for v in variables], slots, ops


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_moves_weights_and_slots_as_keras_does(name):
    """Warmup then cosine decay, weight decay (adamw) and clipnorm, as a config gives them."""
    cfg = mv.load_config("shapes_ssdlite.yaml", [f"train.optimizer.name={name}",
                                                 "train.optimizer.clipnorm=1.0",
                                                 "train.lr_schedule.warmup_epochs=0.5"])
    ours = build_optimizer(cfg, steps_per_epoch=4)
    assert type(ours) is {"adam": Adam, "adamw": AdamW}[name]
    keras_class = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[name]
    theirs = keras_class.from_config(ours.get_config())  # the same schedule and settings
    got, got_slots, got_ops = _run(ours)
    want, want_slots, want_ops = _run(theirs)
    assert "ResourceApplyAdam" in got_ops and "ResourceApplyAdam" not in want_ops
    for a, b in zip(got + got_slots, want + want_slots):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    start = np.random.default_rng(0).normal(size=SHAPES[0]).astype("float32")
    assert np.abs(got[0] - start).max() > 1e-3  # they did move


def test_amsgrad_uses_keras_update():
    _, _, ops = _run(Adam(1e-3, amsgrad=True), steps=1)
    assert "ResourceApplyAdam" not in ops


def test_checkpoint_written_with_keras_adam_resumes_with_ours(tmp_path):
    """Runs trained before the fused update resume: the slots load by the same paths."""
    def model(optimizer):
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        m.compile(optimizer=optimizer, loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    old = model(keras.optimizers.Adam(0.01))
    old.fit(x, y, epochs=2, verbose=0)
    old.save_weights(tmp_path / "last.weights.h5")
    new = model(Adam(0.01))
    new.load_weights(tmp_path / "last.weights.h5")
    assert int(new.optimizer.iterations) == 2
    assert len(new.optimizer.variables) == len(old.optimizer.variables)
    for a, b in zip(new.optimizer.variables, old.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))


MIRRORED = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from mobilevision.tasks.optim import Adam

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, make in (("ours", lambda: Adam(0.01)), ("keras", lambda: keras.optimizers.Adam(0.01))):
        with strategy.scope():
            w = keras.Variable(np.arange(12, dtype="float32").reshape(3, 4))
            opt = make()
            opt.build([w])

        @tf.function
        def step(g):
            def replica(g):
                # each replica's own gradient; the optimizer sums them across replicas
                ctx = tf.distribute.get_replica_context()
                g = g * tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32)
                opt.apply_gradients([(g, w)])
            strategy.run(replica, args=(g,))

        for k in range(3):
            step(tf.fill((3, 4), float(k + 1)) * tf.range(12, dtype=tf.float32)[None, :4] / 4)
        parts = [np.array(v) for v in w.value.values]
        out[name] = {"w": parts[0].tolist(), "replicas_agree": bool(np.array_equal(*parts))}
    print(json.dumps(out))
""")


def test_mirrored_replicas_update_as_keras_adam():
    """Under MirroredStrategy every replica applies the summed gradient to its own copy."""
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ours"]["replicas_agree"] and out["keras"]["replicas_agree"]
    np.testing.assert_allclose(out["ours"]["w"], out["keras"]["w"], rtol=2e-6, atol=1e-7)
    assert out["ours"]["w"] != np.arange(12).reshape(3, 4).tolist()
