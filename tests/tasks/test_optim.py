"""The optimizers of `train.optimizer`: `adam`, `adamw`, `rmsprop` and `sgd` apply each variable's
update as one of TensorFlow's fused kernels (a smaller train step to trace and run, see
mobilevision/tasks/optim.py); they must move the weights and the slots exactly as Keras' own
optimizers do, read and write the same checkpoints, and do the same under a tf.distribute
strategy."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import mobilevision as mv
from mobilevision.tasks.optim import SGD, Adam, AdamW, RMSprop, build_optimizer

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
    slots = [np.array(v) for v in optimizer.variables]  # iterations and every slot
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


FUSED = {"rmsprop": "ResourceApplyRMSProp", "sgd": "ResourceApplyKerasMomentum"}


@pytest.mark.parametrize("name", ["rmsprop", "sgd"])
def test_momentum_optimizers_move_weights_and_slots_as_keras_does(name):
    """coco_ssdlite.yaml's RMSprop (rho, momentum, epsilon 1.0) and voc_deeplabv3.yaml's
    Nesterov SGD, with their schedules and clipnorm."""
    config = {"rmsprop": "coco_ssdlite.yaml", "sgd": "voc_deeplabv3.yaml"}[name]
    cfg = mv.load_config(config, ["train.optimizer.clipnorm=1.0"])
    ours = build_optimizer(cfg, steps_per_epoch=4)
    assert type(ours) is {"rmsprop": RMSprop, "sgd": SGD}[name]
    assert ours.momentum > 0
    keras_class = {"rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[name]
    theirs = keras_class.from_config(ours.get_config())
    got, got_slots, got_ops = _run(ours)
    want, want_slots, want_ops = _run(theirs)
    assert FUSED[name] in got_ops and FUSED[name] not in want_ops
    for a, b in zip(got + got_slots, want + want_slots, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    start = np.random.default_rng(0).normal(size=SHAPES[0]).astype("float32")
    assert np.abs(got[0] - start).max() > 1e-4  # they did move


@pytest.mark.parametrize("make, fused", [
    (lambda cls: cls(0.01, momentum=0.9, centered=True), "ResourceApplyCenteredRMSProp"),
    (lambda cls: cls(0.01, momentum=0.9, nesterov=False), "ResourceApplyKerasMomentum"),
], ids=["rmsprop-centered", "sgd-plain-momentum"])
def test_other_momentum_variants_as_keras(make, fused):
    ours_class = RMSprop if "RMSProp" in fused else SGD
    keras_class = keras.optimizers.RMSprop if ours_class is RMSprop else keras.optimizers.SGD
    got, got_slots, got_ops = _run(make(ours_class))
    want, want_slots, _ = _run(make(keras_class))
    assert fused in got_ops
    for a, b in zip(got + got_slots, want + want_slots, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", [lambda: RMSprop(0.01), lambda: SGD(0.01)],
                         ids=["rmsprop", "sgd"])
def test_no_momentum_keeps_keras_update(optimizer):
    """Without momentum Keras makes no slot for the fused kernel's accumulator."""
    _, _, ops = _run(optimizer(), steps=1)
    assert not ops & {"ResourceApplyRMSProp", "ResourceApplyKerasMomentum"}


def test_amsgrad_uses_keras_update():
    _, _, ops = _run(Adam(1e-3, amsgrad=True), steps=1)
    assert "ResourceApplyAdam" not in ops


@pytest.mark.parametrize("theirs, ours", [
    (lambda: keras.optimizers.Adam(0.01), lambda: Adam(0.01)),
    (lambda: keras.optimizers.RMSprop(0.01, momentum=0.9), lambda: RMSprop(0.01, momentum=0.9)),
], ids=["adam", "rmsprop"])
def test_checkpoint_written_with_keras_optimizer_resumes_with_ours(tmp_path, theirs, ours):
    """Runs trained before the fused update resume: the slots load by the same paths."""
    def model(optimizer):
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        m.compile(optimizer=optimizer, loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    old = model(theirs())
    old.fit(x, y, epochs=2, verbose=0)
    old.save_weights(tmp_path / "last.weights.h5")
    new = model(ours())
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
    from mobilevision.tasks import optim

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, args in (("Adam", {}), ("RMSprop", {"momentum": 0.9})):
        for side, module in (("ours", optim), ("keras", keras.optimizers)):
            with strategy.scope():
                w = keras.Variable(np.arange(12, dtype="float32").reshape(3, 4))
                opt = getattr(module, name)(0.01, **args)
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
            out[name + " " + side] = {"w": parts[0].tolist(),
                                      "replicas_agree": bool(np.array_equal(*parts))}
    print(json.dumps(out))
""")


def test_mirrored_replicas_update_as_keras():
    """Under MirroredStrategy every replica applies the summed gradient to its own copy."""
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("Adam", "RMSprop"):
        ours, theirs = out[name + " ours"], out[name + " keras"]
        assert ours["replicas_agree"] and theirs["replicas_agree"], name
        np.testing.assert_allclose(ours["w"], theirs["w"], rtol=2e-6, atol=1e-7, err_msg=name)
        assert ours["w"] != np.arange(12).reshape(3, 4).tolist()
