"""Optimizer and learning-rate schedule from the `train.*` config keys.

`adam`, `adamw`, `rmsprop` and `sgd` are Keras' optimizers with one change on the TensorFlow
backend: each variable's update is one of TensorFlow's fused kernels (`ResourceApplyAdam`,
`ResourceApplyRMSProp`, `ResourceApplyKerasMomentum`), one op, where Keras builds a chain of
small ones (Adam about 36: the step count, both powers and the bias correction again for every
variable; RMSprop with momentum about 17). The update is the same formula on the same slot
variables (checkpoints move between the two either way), but the traced train step is much
smaller: the detector demo's first train step took 9 s instead of 15 with Adam (tracing and
TensorFlow's graph passes; docs/training.md), and each step runs fewer ops. Other backends,
`amsgrad`, and RMSprop or SGD without momentum use Keras' own update."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mobilevision")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 over `warmup_steps`, then `after` (a schedule counted from step 0)."""

    def __init__(self, after, warmup_steps: int, peak: float):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.peak = float(peak)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(max(self.warmup_steps, 1))
        return ops.where(step < self.warmup_steps, warm, self.after(step))

    def get_config(self):
        return {"after": keras.saving.serialize_keras_object(self.after),
                "warmup_steps": self.warmup_steps, "peak": self.peak}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


class _FusedUpdate:
    """Mixed into Keras' optimizers (below): on the TensorFlow backend each variable's
    `update_step` is one of TensorFlow's fused `ResourceApply*` kernels instead of Keras' chain
    of small ops. The kernels compute Keras' formulas term for term on Keras' own slot variables
    (the classes' docstrings give them). Weight decay, clipping, EMA and gradient accumulation
    are the base optimizer's, before `update_step`, so they are unchanged. Where a kernel would
    need a slot Keras does not make, or computes something else, Keras' update stays (`_fuses`).
    """

    _step = None  # what `_step_constants` gave while a step's updates are built; else None

    def _fuses(self) -> bool:
        return keras.backend.backend() == "tensorflow"

    def _step_constants(self):
        """Tensors computed once per step for every variable's update (Adam's powers)."""
        return ()

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fuses():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        self._step = self._step_constants()
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step = None

    def update_step(self, gradient, variable, learning_rate):
        if self._step is None:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        self._apply(tf, self._get_variable_index(variable), _handle(variable),
                    tf.cast(gradient, dtype), tf.cast(learning_rate, dtype),
                    lambda value: tf.cast(value, dtype))

    def _apply(self, tf, index, var, grad, lr, cast):  # pragma: no cover - per optimizer
        raise NotImplementedError


class _FusedAdamUpdate(_FusedUpdate):
    """Adam and AdamW as one ResourceApplyAdam per variable.

    ResourceApplyAdam computes lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),
    m += (g - m) * (1 - beta_1), v += (g^2 - v) * (1 - beta_2), var -= lr_t * m / (sqrt(v) +
    epsilon): Keras' update term for term. The powers are computed once per step here, as Keras
    does per variable. `amsgrad` keeps Keras' update."""

    def _fuses(self) -> bool:
        return super()._fuses() and not self.amsgrad

    def _step_constants(self):
        step = ops.cast(self.iterations + 1, "float32")
        return (ops.power(ops.cast(self.beta_1, "float32"), step),
                ops.power(ops.cast(self.beta_2, "float32"), step))

    def _apply(self, tf, index, var, grad, lr, cast):
        beta_1_power, beta_2_power = (cast(p) for p in self._step)
        tf.raw_ops.ResourceApplyAdam(
            var=var, m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=lr,
            beta1=cast(self.beta_1), beta2=cast(self.beta_2), epsilon=cast(self.epsilon),
            grad=grad)


def _handle(variable):
    """The resource handle of a Keras variable or of the tf.Variable Keras passes to
    `update_step` (under a tf.distribute strategy: this replica's component)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


@keras.saving.register_keras_serializable(package="mobilevision")
class Adam(_FusedAdamUpdate, keras.optimizers.Adam):
    """keras.optimizers.Adam, each variable's update one fused op (see `_FusedAdamUpdate`)."""


@keras.saving.register_keras_serializable(package="mobilevision")
class AdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """keras.optimizers.AdamW, each variable's update one fused op (see `_FusedAdamUpdate`)."""


@keras.saving.register_keras_serializable(package="mobilevision")
class RMSprop(_FusedUpdate, keras.optimizers.RMSprop):
    """keras.optimizers.RMSprop, each variable's update one ResourceApplyRMSProp (centered:
    ResourceApplyCenteredRMSProp): ms = rho * ms + (1 - rho) * g^2, [mg = rho * mg + (1 - rho) *
    g,] mom = momentum * mom + lr * g / sqrt(ms [- mg^2] + epsilon), var -= mom, as Keras
    computes it. Without momentum Keras makes no `mom` slot, and its own update stays."""

    def _fuses(self) -> bool:
        return super()._fuses() and self.momentum > 0

    def _apply(self, tf, index, var, grad, lr, cast):
        args = dict(var=var, ms=_handle(self._velocities[index]),
                    mom=_handle(self._momentums[index]), lr=lr, rho=cast(self.rho),
                    momentum=cast(self.momentum), epsilon=cast(self.epsilon), grad=grad)
        if self.centered:
            tf.raw_ops.ResourceApplyCenteredRMSProp(
                mg=_handle(self._average_gradients[index]), **args)
        else:
            tf.raw_ops.ResourceApplyRMSProp(**args)


@keras.saving.register_keras_serializable(package="mobilevision")
class SGD(_FusedUpdate, keras.optimizers.SGD):
    """keras.optimizers.SGD with momentum, each variable's update one
    ResourceApplyKerasMomentum: m = momentum * m - lr * g, then var += m (nesterov: var +=
    momentum * m - lr * g), as Keras computes it. Without momentum Keras' update stays."""

    def _fuses(self) -> bool:
        return super()._fuses() and self.momentum != 0

    def _apply(self, tf, index, var, grad, lr, cast):
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=var, accum=_handle(self.momentums[index]), lr=lr, grad=grad,
            momentum=cast(self.momentum), use_nesterov=bool(self.nesterov))


def learning_rate(cfg, steps_per_epoch: int):
    """train.lr_schedule -> a float or a LearningRateSchedule counted in optimizer steps.

    exponential: lr * decay_rate ** floor(step / (decay_epochs * steps_per_epoch)) (the paper's
    0.98 per epoch); cosine: to zero over all epochs; constant."""
    s = cfg.train.lr_schedule
    lr = cfg.train.optimizer.learning_rate
    if s.name == "constant":
        schedule = keras.optimizers.schedules.ExponentialDecay(lr, 1, 1.0)
    elif s.name == "exponential":
        decay_steps = max(1, int(round(s.decay_epochs * steps_per_epoch)))
        schedule = keras.optimizers.schedules.ExponentialDecay(lr, decay_steps, s.decay_rate,
                                                               staircase=True)
    elif s.name == "cosine":
        total = max(1, cfg.train.epochs * steps_per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(lr, total)
    else:  # pragma: no cover - validated by the config schema
        raise ValueError(s.name)
    warmup = int(math.ceil(s.warmup_epochs * steps_per_epoch))
    if warmup > 0:
        schedule = WarmupSchedule(schedule, warmup, lr)
    return schedule


def build_optimizer(cfg, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    o = cfg.train.optimizer
    lr = learning_rate(cfg, steps_per_epoch)
    extra = {"clipnorm": o.clipnorm} if o.clipnorm else {}
    if o.name == "rmsprop":
        return RMSprop(lr, rho=o.rho, momentum=o.momentum, epsilon=o.epsilon, **extra)
    if o.name == "sgd":
        return SGD(lr, momentum=o.momentum, nesterov=True, **extra)
    if o.name == "adam":
        return Adam(lr, epsilon=o.epsilon, **extra)
    if o.name == "adamw":
        return AdamW(lr, weight_decay=cfg.train.weight_decay, epsilon=o.epsilon, **extra)
    raise ValueError(o.name)  # pragma: no cover


def compile_model(model, cfg, steps_per_epoch: int, **compile_args) -> None:
    """`model.compile` with the config's optimizer (`build_optimizer`), the optimizer built at
    once for the model's trainable variables (its slots: under a tf.distribute strategy, call
    this in its scope). Built inside the first traced train step instead, it makes TensorFlow
    trace that step twice."""
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch), **compile_args)
    model.optimizer.build(model.trainable_variables)
