"""What every task shares: the backbone from config, the model that owns its decoder, and the
small record (`Task`) that names a task's parts.

A task is a few parts, each with one job (see `mobilevision.tasks.TASKS`):

- `build(cfg, input_size=None)`: the Keras model with its decoder. Called on images it returns
  the raw outputs training needs; `predict` / `predict_on_batch` return the decoded ones, and
  every exported file computes those same decoded outputs (`DecodingModel`).
- `compile(model, cfg, steps_per_epoch)`: the loss and optimizer (built: `optim.compile_model`).
- `transform(cfg, model)`: the training augmentation and target encoding of one example, for the
  input pipeline (`data.pipeline.build_dataset`).
- `evaluate(model, source, split, **options)`: the metrics of a split, computed from `predict`'s
  results, so a Keras model and an exported file are scored by the same code.
- `pictures(model, source, split, evaluation)`: what the evaluation shows (`plots.TaskPictures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras

from mobilevision.backbones import BACKBONES


def kernel_weight_decay(cfg) -> float:
    """L2 on kernels, except with AdamW, whose decay is decoupled in the optimizer."""
    return 0.0 if cfg.train.optimizer.name == "adamw" else cfg.train.weight_decay


def head_taps(cfg) -> list[tuple[str, int, int]]:
    """The backbone taps the task's head reads, finest first: [(name, channels, stride)].

    The names are `model.head.features` (the config loader fills in the backbone's default for
    the task and checks them); channels and strides are the backbone's `feature_specs`."""
    b = cfg.model.backbone
    specs = BACKBONES[b.name].feature_specs(b.alpha, b.output_stride)
    return [(name, *specs[name]) for name in cfg.model.head.features]


def build_backbone(cfg, taps=None, input_size=None) -> keras.Model:
    """The backbone of `cfg.model.backbone`, with its weights file loaded by layer name.

    taps: the layer names to return (default: the backbone's useful taps, `Backbone.taps`;
      a task passes its head's, `model.head.features`, so layers after them are not built).
    input_size: (H, W), default `model.input_size`.
    Returns keras.Model: (N, H, W, 3) pixels 0..255 -> {tap: (N, H/s, W/s, C)}."""
    b = cfg.model.backbone
    h, w = input_size or cfg.model.input_size
    model = BACKBONES[b.name].build(input_shape=(h, w, 3), alpha=b.alpha,
                                    output_stride=b.output_stride,
                                    taps=tuple(taps or BACKBONES[b.name].taps),
                                    bn_momentum=b.bn_momentum,
                                    weight_decay=kernel_weight_decay(cfg))
    if b.weights:
        from mobilevision.backbones.imagenet import load_backbone_weights

        # "imagenet" (Keras' published file, fetched once into Keras' cache) or a file.
        report = load_backbone_weights(model, b.weights, backbone=b.name, alpha=b.alpha)
        object.__setattr__(model, "weights_report", report)  # read by `weights_report`
    model.trainable = b.trainable
    return model


def weights_report(model):
    """What loading weights into `model` (a task model from `tasks.build_model`) loaded and
    started fresh, by layer (`backbones.weights.LoadReport`): the `model.weights` file's, else
    the backbone's `model.backbone.weights`; None when neither was set."""
    found = getattr(model, "weights_report", None)
    if found is not None:
        return found
    for layer in model.layers:
        if getattr(layer, "weights_report", None) is not None:
            return layer.weights_report
    return None


class DecodingModel(keras.Model):
    """A functional model that owns its decoder, as KerasHub's tasks do: `model(images)` gives
    the raw outputs (what the loss sees), `model.predict(images)` and `predict_on_batch` the
    decoded ones, `decode(raw)` in between. Export traces `decode(model(images))` into every
    file, so each runtime returns the decoded structure as it comes (`TASK_OUTPUTS` in
    `mobilevision.export.formats` lists it per task)."""

    def decode(self, raw) -> dict:
        raise NotImplementedError

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.decode(self(x, training=False))


@dataclass(frozen=True)
class Task:
    """A task's name, its parts (see the module docstring) and the metric that picks the best
    checkpoint (`monitor`, logged as `val_<monitor>` during training)."""

    name: str
    build: Callable
    compile: Callable
    transform: Callable
    evaluate: Callable
    pictures: Callable
    monitor: str
    logged: tuple = ()     # metrics logged each evaluation while training, as val_<name>
    monitor_mode: str = "max"
    eval_options: dict = field(default_factory=dict)  # evaluate's options while training


@dataclass
class Evaluation:
    """What a task's `evaluate` returns: the metrics (eval.json), the figures `pictures` draws
    from them ({"confusion": (K, K)}, {"pr": ...}, {"per_class": (metric, values)}), and files
    to write beside eval.json ({name: JSON-able})."""

    metrics: dict
    figures: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def readable_batches(source, split: str, batch_size: int):
    """Yield [(index, image (h, w, 3) uint8, target)] of the readable examples of `split`, in
    record order, `batch_size` at a time, decoded by the input pipeline (`build_dataset`, in the
    graph); unreadable files are left out (recorded in SKIPPED by the pipeline)."""
    from mobilevision.data.pipeline import build_dataset

    ds, _ = build_dataset(source, split, training=False)
    batch = []
    for image, target, ok, index in ds.as_numpy_iterator():
        if not ok:
            continue
        batch.append((int(index), image, target))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
