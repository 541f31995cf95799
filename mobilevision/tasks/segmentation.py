"""Semantic segmentation: MobileNetV2 + DeepLabv3 (docs/paper.md, Table 7), mIoU from a
confusion matrix.

The model maps (N, H, W, 3) pixels to (N, H, W, K) float32 logits at the input size; decoded,
to their softmax probabilities (`scores`). Training batches are DeepLab-augmented crops (random
scale, pad, crop, flip). Evaluation runs `predict`, which works at each image's own resolution:
the image is resized to fit the model's input (times each of `eval.scales`), padded, and the
probabilities cropped and resized back to the original size, averaged over scales and (with
`eval.flip`) mirrored inputs: the paper's MF.
"""

from __future__ import annotations

import keras
import numpy as np

from mobilevision.heads.deeplabv3 import aspp_rates, deeplabv3_head
from mobilevision.tasks.base import (DecodingModel, Evaluation, Task, build_backbone, head_taps,
                                     kernel_weight_decay, readable_batches)
from mobilevision.tasks.optim import compile_model


@keras.saving.register_keras_serializable(package="mobilevision")
class SegmenterModel(DecodingModel):
    """The functional DeepLabv3; decoded, its logits become per-pixel class probabilities."""

    def decode(self, raw):
        return {"scores": keras.ops.softmax(keras.ops.cast(raw, "float32"), axis=-1)}


def build(cfg, input_size=None) -> SegmenterModel:
    """The DeepLabv3 model at `model.input_size` (or `input_size`, for evaluation at other
    scales: the same layers, so weights copy over one to one)."""
    size = tuple(input_size or cfg.model.input_size)
    b, h = cfg.model.backbone, cfg.model.head
    (tap, _, stride), = head_taps(cfg)
    image = keras.Input(shape=(*size, 3), name="image")
    logits = deeplabv3_head(build_backbone(cfg, [tap], size)(image)[tap], stride,
                            cfg.model.num_classes, aspp=h.aspp,
                            rates=aspp_rates(stride, h.aspp_rates), channels=h.channels,
                            dropout=h.dropout, bn_momentum=h.bn_momentum,
                            weight_decay=kernel_weight_decay(cfg))
    return SegmenterModel(image, logits, name=f"{b.name}_deeplabv3")


def compile(model, cfg, steps_per_epoch: int) -> None:
    from mobilevision.tasks.segmentation_metrics import ConfusionMatrixMetric, SegmentationLoss

    k = cfg.model.num_classes
    compile_model(
        model, cfg, steps_per_epoch,
        loss=SegmentationLoss(k, cfg.train.class_weights, cfg.train.label_smoothing),
        metrics=[ConfusionMatrixMetric(k, "mIoU"), ConfusionMatrixMetric(k, "pixel_accuracy")])


def transform(cfg, model):
    """-> fn(image uint8, label map uint8, seed) -> (image (H, W, 3) float32 0..255, labels
    (H, W) int32, 255 = ignore): DeepLab's random scale, pad, crop and flip."""
    from mobilevision.data.segmentation_augment import train_transform

    size = tuple(model.input_shape[1:3])
    a = cfg.data.augment

    def fn(image, label, seed):
        return train_transform(image, label, seed, size, tuple(a.scale_range), a.flip)

    return fn


def evaluate(model, source, split: str, batch_size: int = 8, scales=None,
             flip=None) -> Evaluation:
    """mIoU, per-class IoU and pixel accuracy of `model.predict` on `split`, at the images' own
    resolution, with `eval.scales` and `eval.flip` unless given (a file runs at scale 1 only).
    Figures: the confusion matrix and IoU per class."""
    from mobilevision.tasks.segmentation_metrics import confusion_matrix, segmentation_scores

    names = source.class_names
    k = len(names)
    options = {k_: v for k_, v in (("scales", scales), ("flip", flip)) if v is not None}
    read, cm = 0, np.zeros((k, k), np.int64)
    for batch in readable_batches(source, split, batch_size):
        for (_, _, label), result in zip(batch, model.predict([b[1] for b in batch], **options)):
            cm += confusion_matrix(label, result.mask, k)
            read += 1
    scores = segmentation_scores(cm)
    iou = {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, scores["IoU"])}
    used = model.segmentation_options(**options)
    metrics = {"mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"],
               "per_class_IoU": iou, "confusion_matrix": cm.tolist(),
               "scales": list(used["scales"]), "flip": bool(used["flip"]), "split": split,
               "num_examples": read, "skipped_examples": dict(source.records(split).skipped)}
    return Evaluation(metrics, {"confusion": cm, "per_class": ("IoU", iou)})


def pictures(model, source, split, evaluation):
    """The confusion matrix and per-class IoU, and the fixed sample: the true label map beside
    the prediction, both as overlays."""
    from pathlib import Path

    from mobilevision import plots

    names = source.class_names
    records = source.records(split).records
    samples = [(plots.overlay_mask(image, label, names), model.predict(image).plot(),
                Path(records[index].path).name, None)
               for index, image, label in source.samples(split)]
    return plots.TaskPictures(samples=samples, names=names, **evaluation.figures)


TASK = Task("segmentation", build=build, compile=compile, transform=transform,
            evaluate=evaluate, pictures=pictures, monitor="mIoU",
            logged=("mIoU", "pixel_accuracy"), eval_options={"scales": [1.0], "flip": False})
