"""Image classification: MobileNetV2 + global pooling + `predictions`, top-1/top-5 accuracy."""

from __future__ import annotations

import keras
import numpy as np

from mobilevision.heads.classifier import classifier_head
from mobilevision.tasks.base import (DecodingModel, Evaluation, Task, build_backbone, head_taps,
                                     kernel_weight_decay, readable_batches)
from mobilevision.tasks.optim import compile_model


@keras.saving.register_keras_serializable(package="mobilevision")
class ClassifierModel(DecodingModel):
    """The functional classifier: keras.applications' softmax `predictions` layer is its output
    (so its weight files and probabilities match); decoded, it is named."""

    def decode(self, raw):
        return {"probabilities": raw}


def build(cfg, input_size=None) -> ClassifierModel:
    size = tuple(input_size or cfg.model.input_size)
    (tap, _, _), = head_taps(cfg)
    image = keras.Input(shape=(*size, 3), name="image")
    probs = classifier_head(build_backbone(cfg, [tap], size)(image)[tap], cfg.model.num_classes,
                            cfg.model.head.dropout, kernel_weight_decay(cfg))
    return ClassifierModel(image, probs, name=f"{cfg.model.backbone.name}_classifier")


def compile(model, cfg, steps_per_epoch: int) -> None:
    k = min(5, cfg.model.num_classes)
    compile_model(
        model, cfg, steps_per_epoch,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="top1"),
                 keras.metrics.TopKCategoricalAccuracy(k=k, name="top5")])


def transform(cfg, model):
    """-> fn(image uint8, label, seed) -> (image (H, W, 3) float32 0..255, one-hot (K,)):
    Inception-style random crop (or the evaluation crop) and flip."""
    import tensorflow as tf

    from mobilevision.data import augment

    size = tuple(model.input_shape[1:3])
    a, k = cfg.data.augment, cfg.model.num_classes

    def fn(image, label, seed):
        if a.random_resized_crop:
            image = augment.random_resized_crop(image, seed, size, a.crop_scale, a.crop_ratio)
        else:
            image = augment.central_crop_resize(image, size, 1.0)
        if a.flip:
            image = augment.random_flip(image, tf.reverse(seed, [0]))
        return image, tf.one_hot(label, k)

    return fn


def evaluate(model, source, split: str, batch_size: int = 32) -> Evaluation:
    """top1, top5, cross_entropy and per_class_accuracy (the share of each class's images whose
    top class is right; None for a class without images) of `model.predict` on `split`.

    top1 is the argmax; top5 counts ties in the true class's favour, as `in_top_k`. The
    cross-entropy is of the probabilities with `train.label_smoothing` (not Keras' `loss`, which
    adds weight decay). Unreadable files count in no metric. Figures: the (K, K) confusion
    matrix of the top class, rows the true class."""
    names = source.class_names
    num_classes, eps = len(names), model.config.train.label_smoothing if model.config else 0.0
    k = min(5, num_classes)
    total = top1 = top5 = loss = 0
    cm = np.zeros((num_classes, num_classes), np.int64)
    for batch in readable_batches(source, split, batch_size):
        probs = np.stack([r.probabilities for r in model.predict([b[1] for b in batch])])
        label = np.asarray([b[2] for b in batch], np.int64)
        rank = (probs > probs[np.arange(len(label)), label][:, None]).sum(-1)
        smooth = np.full(probs.shape, eps / num_classes)
        smooth[np.arange(len(label)), label] += 1 - eps
        total += len(label)
        top1 += int((probs.argmax(-1) == label).sum())
        top5 += int((rank < k).sum())
        loss += float(-(smooth * np.log(np.clip(probs, 1e-7, 1.0))).sum())
        np.add.at(cm, (label, probs.argmax(-1)), 1)
    n = max(total, 1)
    totals = cm.sum(1)
    metrics = {"top1": top1 / n, "top5": top5 / n, "cross_entropy": loss / n,
               "per_class_accuracy": {name: (float(cm[i, i] / totals[i]) if totals[i] else None)
                                      for i, name in enumerate(names)},
               "num_examples": total, "split": split}
    return Evaluation(metrics, {"confusion": cm})


def pictures(model, source, split, evaluation):
    """The confusion matrix, and the fixed sample: the true class beside the prediction (a
    wrong one captioned in red)."""
    from mobilevision import plots

    names = source.class_names
    samples = []
    for index, image, label in source.samples(split):
        result = model.predict(image)
        caption = _caption(source, split, index)
        samples.append((plots.draw_caption(image, names[label], label + 1), result.plot(),
                        caption, result.class_id == label))
    return plots.TaskPictures(samples=samples, names=names, **evaluation.figures)


def _caption(source, split, index) -> str:
    from pathlib import Path

    path = getattr(source, "path", None)
    return Path(path(split, index)).name if path else f"{split}[{index}]"


TASK = Task("classification", build=build, compile=compile, transform=transform,
            evaluate=evaluate, pictures=pictures, monitor="top1",
            logged=("top1", "top5", "cross_entropy"))
