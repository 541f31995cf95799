"""Segmentation loss and confusion-matrix metrics (255 = ignore everywhere).

`confusion_matrix` / `segmentation_scores` are the NumPy reference used by evaluation; the
Keras loss and metric are written in `keras.ops` so they run under every backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mobilevision.tasks.distribute import replica_sum

IGNORE_LABEL = 255


def confusion_matrix(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """(K, K) int64 counts, rows = ground truth, columns = prediction, over the pixels whose
    label is not `ignore_label` (labels >= K other than it are an error)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    valid = labels != ignore_label
    labels, predictions = labels[valid], predictions[valid]
    if labels.size and (labels.max() >= num_classes or labels.min() < 0):
        raise ValueError(f"label {labels.max()} outside 0..{num_classes - 1}")
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(cm) -> dict:
    """From a confusion matrix: {"mIoU", "IoU" (K values, NaN for a class that appears in neither
    the labels nor the predictions), "pixel_accuracy"}. mIoU averages the defined IoUs only
    (as DeepLab's streaming mean IoU)."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    return {"mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "IoU": iou,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0}


@keras.saving.register_keras_serializable(package="mobilevision")
class SegmentationLoss(keras.losses.Loss):
    """Softmax cross-entropy per pixel from logits, pixels labelled 255 ignored, averaged over
    the batch's pixels with a non-zero weight (DeepLab's SUM_BY_NONZERO_WEIGHTS).

    y_true: (N, H, W) integer labels; y_pred: (N, H, W, K) logits.
    class_weights: optional K weights on each pixel's loss by its label.
    """

    def __init__(self, num_classes: int, class_weights=None, label_smoothing: float = 0.0,
                 ignore_label: int = IGNORE_LABEL, name="segmentation_ce", **kwargs):
        kwargs.pop("reduction", None)
        # Each example's entry is already divided by the batch's pixel count: sum them.
        super().__init__(name=name, reduction="sum", **kwargs)
        self.num_classes = int(num_classes)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)
        self.ignore_label = int(ignore_label)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")
        valid = ops.not_equal(labels, self.ignore_label)
        safe = ops.where(valid, labels, 0)
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(safe, -1), axis=-1), -1)
        if self.label_smoothing:
            eps = self.label_smoothing
            nll = (1.0 - eps) * nll - eps * ops.mean(logp, axis=-1)
        weight = ops.cast(valid, "float32")
        if self.class_weights is not None:
            weight = weight * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe)
        # Under tf.distribute: the global batch's weighted pixels (Keras does not divide a
        # "sum"-reduced loss by the replica count, so neither is this one).
        count = ops.maximum(replica_sum(ops.sum(ops.cast(weight > 0, "float32"))), 1.0)
        return ops.sum(nll * weight, axis=(1, 2)) / count

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "class_weights": self.class_weights, "label_smoothing": self.label_smoothing,
                "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="mobilevision")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """A running confusion matrix over pixels (label 255 skipped); `result()` is mIoU or pixel
    accuracy (`score`). y_true: (N, H, W) labels; y_pred: (N, H, W, K) logits or scores."""

    def __init__(self, num_classes: int, score: str = "mIoU", ignore_label: int = IGNORE_LABEL,
                 name=None, **kwargs):
        if score not in ("mIoU", "pixel_accuracy"):
            raise ValueError(f"score must be 'mIoU' or 'pixel_accuracy', got {score!r}")
        super().__init__(name=name or score, **kwargs)
        self.num_classes, self.score, self.ignore_label = int(num_classes), score, int(ignore_label)
        self.cm = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                    dtype="float32", name="confusion_matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        preds = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        valid = ops.logical_and(ops.not_equal(labels, self.ignore_label), labels < k)
        # Skipped pixels go to one extra bin that is dropped.
        index = ops.where(valid, labels * k + preds, k * k)
        counts = ops.segment_sum(ops.ones_like(index, "float32"), index, num_segments=k * k + 1)
        self.cm.assign_add(ops.reshape(counts[: k * k], (k, k)))

    def result(self):
        cm = self.cm
        tp = ops.diagonal(cm)
        if self.score == "pixel_accuracy":
            return ops.sum(tp) / ops.maximum(ops.sum(cm), 1.0)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        defined = ops.cast(union > 0, "float32")
        iou = tp / ops.maximum(union, 1.0)
        return ops.sum(iou * defined) / ops.maximum(ops.sum(defined), 1.0)

    def reset_state(self):
        self.cm.assign(ops.zeros_like(self.cm))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "score": self.score,
                "ignore_label": self.ignore_label}
