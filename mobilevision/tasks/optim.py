"""Optimizer and learning-rate schedule from the `train.*` config keys."""

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
        return keras.optimizers.RMSprop(lr, rho=o.rho, momentum=o.momentum, epsilon=o.epsilon, **extra)
    if o.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=o.momentum, nesterov=True, **extra)
    if o.name == "adam":
        return keras.optimizers.Adam(lr, epsilon=o.epsilon, **extra)
    if o.name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.train.weight_decay, epsilon=o.epsilon, **extra)
    raise ValueError(o.name)  # pragma: no cover
