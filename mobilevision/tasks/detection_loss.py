"""SSD training loss: smooth-L1 localization plus classification, normalized by the matches.

As the TF Object Detection API configures SSD(Lite): smooth L1 (Huber, delta 1) on the box
encodings of positive anchors; softmax cross-entropy over background + K classes with hard
negative mining 3:1 per image, or (config option) sigmoid focal loss over the K object classes
on every non-ignored anchor without mining; the sum divided by max(1, positive anchors in the
batch) (`normalize_loss_by_num_matches`).

Targets come from `mobilevision.ops.matcher.encode_targets`, batched:
  y_true = {"boxes": (N, A, 4) float codes, "classes": (N, A) int, 0 background, 1..K objects,
            -1 ignore}
  y_pred = the SSDLite head's {"boxes": (N, A, 4) codes, "classes": (N, A, K + 1) logits}.
A `(boxes, classes)` pair is accepted for y_true as well.

Keras' `compile(loss=...)` gives a single loss to each output separately, while this loss needs
both outputs at once (the class targets select the anchors whose boxes are trained), so the model
calls it from `compute_loss`:

    class SSDModel(keras.Model):  # a functional model: SSDModel(inputs, outputs)
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            loss = self.ssd_loss(y, y_pred, sample_weight)  # an SSDLoss
            if self.losses:  # + weight decay, as Keras adds (and scales for tf.distribute) it
                loss = loss + super().compute_loss(x, y, y_pred, sample_weight, training)
            return loss

and is compiled with `loss=None`.

Written with `keras.ops` only, so it runs under every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops

from mobilevision.tasks.distribute import num_replicas, replica_sum

CLASSIFICATION_LOSSES = ("softmax", "focal")


def smooth_l1(diff, delta: float = 1.0):
    """Elementwise Huber loss of `diff`: 0.5 d^2 / delta for |d| < delta, else |d| - 0.5 delta
    (the OD API's smooth L1 is delta 1)."""
    d = ops.abs(diff)
    return ops.where(d < delta, 0.5 * ops.square(d) / delta, d - 0.5 * delta)


def softmax_cross_entropy(logits, labels):
    """logits (..., C), labels (...) int in 0..C-1 (negative labels read as 0; the caller masks
    them) -> (...) cross-entropy -log softmax(logits)[label]."""
    log_probs = ops.log_softmax(logits, axis=-1)
    onehot = ops.one_hot(ops.maximum(labels, 0), ops.shape(logits)[-1], dtype=logits.dtype)
    return -ops.sum(onehot * log_probs, axis=-1)


def sigmoid_focal_loss(logits, labels, alpha: float = 0.25, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017) over the object classes, summed per anchor.

    Args:
      logits: (..., K + 1); column 0 (background) takes no part, columns 1..K are independent
        sigmoids.
      labels: (...) int, 0 background (all-zero target), 1..K objects; negatives read as 0 (the
        caller masks ignored anchors).

    Returns:
      (...) sum over the K classes of alpha_t (1 - p_t)^gamma BCE(p, z).
    """
    x = logits[..., 1:]
    z = ops.one_hot(ops.maximum(labels, 0), ops.shape(logits)[-1], dtype=logits.dtype)[..., 1:]
    bce = ops.softplus(x) - x * z  # stable sigmoid cross-entropy with logits
    p = ops.sigmoid(x)
    p_t = p * z + (1.0 - p) * (1.0 - z)
    alpha_t = alpha * z + (1.0 - alpha) * (1.0 - z)
    return ops.sum(alpha_t * ops.power(1.0 - p_t, gamma) * bce, axis=-1)


def mine_hard_negatives(losses, negatives, num_positives, negative_ratio: float = 3.0,
                        min_negatives: int = 0):
    """The highest-loss negatives of each image.

    Args:
      losses: (N, A) per-anchor classification loss.
      negatives: (N, A) bool, the anchors that may be mined (background, not ignored).
      num_positives: (N,) positives per image.
      negative_ratio: keep k = max(min_negatives, floor(negative_ratio * num_positives))
        negatives per image (all of them when there are fewer).
      min_negatives: see above; 0 mines nothing in an image without positives.

    Returns:
      (N, A) bool: exactly min(k, number of negatives) anchors per image.
    """
    num_negatives = ops.sum(ops.cast(negatives, "int32"), axis=1)
    k = ops.cast(ops.floor(ops.cast(num_positives, "float32") * negative_ratio), "int32")
    k = ops.minimum(ops.maximum(k, min_negatives), num_negatives)
    # Losses are >= 0, so -1 ranks every non-candidate after every candidate.
    scores = ops.where(negatives, ops.stop_gradient(losses), -1.0)
    # Rank of each anchor in descending loss order (argsort of the argsort). Selecting by rank
    # rather than by ">= the k-th largest value" keeps exactly k under ties, which are the rule
    # early in training when a fresh head predicts nearly the same logits everywhere.
    rank = ops.argsort(ops.argsort(-scores, axis=1), axis=1)
    return ops.logical_and(negatives, ops.cast(rank, "int32") < ops.expand_dims(k, 1))


def _targets(y_true):
    if isinstance(y_true, dict):
        boxes, classes = y_true["boxes"], y_true["classes"]
    else:
        boxes, classes = y_true
    classes = ops.convert_to_tensor(classes)
    if len(classes.shape) == 3:  # (N, A, 1)
        classes = ops.squeeze(classes, -1)
    # Keras' Loss.__call__ hands y_true over as floats; labels are small integers.
    return ops.convert_to_tensor(boxes, "float32"), ops.cast(ops.round(classes), "int32")


def ssd_loss_terms(y_true, y_pred, classification: str = "softmax", negative_ratio: float = 3.0,
                   min_negatives: int = 0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                   huber_delta: float = 1.0, per_image: bool = False) -> dict:
    """The two parts of the SSD loss.

    Args:
      y_true: {"boxes": (N, A, 4), "classes": (N, A) int} (see the module docstring).
      y_pred: {"boxes": (N, A, 4), "classes": (N, A, K + 1) logits}.
      classification: "softmax" (with hard negative mining) or "focal" (sigmoid, no mining).
      negative_ratio, min_negatives: hard negative mining (softmax only).
      focal_alpha, focal_gamma: focal loss (focal only).
      huber_delta: smooth-L1 transition point.
      per_image: False: batch scalars, normalized; True: raw per-image sums.

    Returns:
      per_image False: {"loc": (), "cls": () each summed over the batch and divided by
        max(1, num_pos), "num_pos": () positives in the batch}; the loss with unit weights is
        loc + cls.
      per_image True: {"loc": (N,), "cls": (N,), "num_pos": (N,)} unnormalized sums per image.
    """
    if classification not in CLASSIFICATION_LOSSES:
        raise ValueError(f"classification must be one of {CLASSIFICATION_LOSSES}, "
                         f"got {classification!r}")
    box_targets, labels = _targets(y_true)
    box_preds = ops.cast(y_pred["boxes"], "float32")
    logits = ops.cast(y_pred["classes"], "float32")

    positives = labels > 0
    pos = ops.cast(positives, "float32")
    num_pos = ops.sum(pos, axis=1)  # (N,)

    loc = ops.sum(smooth_l1(box_preds - box_targets, huber_delta), axis=-1)  # (N, A)
    loc = ops.sum(loc * pos, axis=1)

    if classification == "softmax":
        ce = softmax_cross_entropy(logits, labels)  # (N, A)
        mined = mine_hard_negatives(ce, labels == 0, num_pos, negative_ratio, min_negatives)
        keep = ops.cast(ops.logical_or(positives, mined), "float32")
        cls = ops.sum(ce * keep, axis=1)
    else:
        focal = sigmoid_focal_loss(logits, labels, focal_alpha, focal_gamma)
        cls = ops.sum(focal * ops.cast(labels >= 0, "float32"), axis=1)

    if per_image:
        return {"loc": loc, "cls": cls, "num_pos": num_pos}
    normalizer = ops.maximum(ops.sum(num_pos), 1.0)
    return {"loc": ops.sum(loc) / normalizer, "cls": ops.sum(cls) / normalizer,
            "num_pos": ops.sum(num_pos)}


@keras.saving.register_keras_serializable(package="mobilevision")
class SSDLoss(keras.losses.Loss):
    """SSD loss on the whole output dict: (loc_weight * loc + cls_weight * cls) / max(1, P),
    P = positive anchors in the batch.

    Call as `loss(y_true, y_pred, sample_weight=None)` with the dicts of the module docstring;
    returns a scalar. `call` returns per-image values scaled by N / max(1, P), so that the
    default reduction "sum_over_batch_size" (divide by N, and by the replica count under
    tf.distribute) yields exactly the batch sum over P. Under tf.distribute P counts the global
    batch's positives, so the loss does not depend on how the batch is split; a (N,) sample_weight scales each image's
    share (the normalizer still counts every image's positives).

    Args:
      classification: "softmax" (hard negative mining) or "focal" (sigmoid over 1..K).
      negative_ratio: mined negatives per positive, per image (softmax).
      min_negatives: negatives mined in every image, even one without positives (softmax; the OD
        API's min_negatives_per_image).
      focal_alpha, focal_gamma: focal loss parameters.
      huber_delta: smooth-L1 delta.
      loc_weight, cls_weight: weights of the two parts.
    """

    def __init__(self, classification: str = "softmax", negative_ratio: float = 3.0,
                 min_negatives: int = 0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 huber_delta: float = 1.0, loc_weight: float = 1.0, cls_weight: float = 1.0,
                 name: str = "ssd_loss", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if classification not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification must be one of {CLASSIFICATION_LOSSES}, "
                             f"got {classification!r}")
        self.classification = classification
        self.negative_ratio = float(negative_ratio)
        self.min_negatives = int(min_negatives)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.huber_delta = float(huber_delta)
        self.loc_weight = float(loc_weight)
        self.cls_weight = float(cls_weight)

    def _term_options(self) -> dict:
        return {"classification": self.classification, "negative_ratio": self.negative_ratio,
                "min_negatives": self.min_negatives, "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma, "huber_delta": self.huber_delta}

    def terms(self, y_true, y_pred) -> dict:
        """{"loc", "cls", "num_pos"}: batch scalars as `ssd_loss_terms` gives them (unweighted,
        normalized), for logging; loss == loc_weight * loc + cls_weight * cls without
        sample weights."""
        return ssd_loss_terms(y_true, y_pred, **self._term_options())

    def call(self, y_true, y_pred):
        t = ssd_loss_terms(y_true, y_pred, per_image=True, **self._term_options())
        batch = ops.cast(ops.shape(t["loc"])[0], "float32")
        # Under tf.distribute: the global batch's positives, and this replica's share of them
        # (Keras divides this mean-reduced loss by the replica count).
        normalizer = ops.maximum(replica_sum(ops.sum(t["num_pos"])), 1.0) / num_replicas()
        return (self.loc_weight * t["loc"] + self.cls_weight * t["cls"]) * (batch / normalizer)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._term_options())
        config.update(loc_weight=self.loc_weight, cls_weight=self.cls_weight)
        return config
