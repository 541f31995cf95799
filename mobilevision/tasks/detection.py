"""Object detection: a backbone + SSDLite, anchors matched in the input pipeline, COCO mAP.

The model's raw outputs are {"boxes": (N, A, 4) box-coder codes, "classes": (N, A, K+1)
logits}; its decoder (`SSDDecoder`: box decoding, class probabilities, per-class NMS, boxes
clipped to the image) turns them into the detections `predict` returns and every exported file
computes. Boxes inside the pipeline are [ymin, xmin, ymax, xmax] normalized to the image.
"""

from __future__ import annotations

import keras
import numpy as np

from mobilevision.heads.ssdlite import ssdlite_head
from mobilevision.ops.anchors import SSDAnchorGenerator
from mobilevision.tasks.base import (DecodingModel, Evaluation, Task, build_backbone, head_taps,
                                     kernel_weight_decay, readable_batches)
from mobilevision.tasks.optim import compile_model

# ssd_random_crop of the TF OD API: one of these minimum object coverages per example.
MIN_OBJECT_COVERED = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


class SSDDecoder:
    """Raw outputs -> detections, for one set of anchors and post-processing settings.

    Args:
      anchors: (A, 4) [ymin, xmin, ymax, xmax] normalized, in the head's output order.
      activation: "softmax" (column 0 is background) or "sigmoid" (the focal loss's).
      iou_threshold, score_threshold, max_detections: per-class NMS (`model.head.nms_iou`,
        `score_threshold`, `max_detections`).
      map_sizes: (h, w) of every map the head predicts on (what the anchors were made from).
    """

    def __init__(self, anchors, activation="softmax", iou_threshold=0.6, score_threshold=0.01,
                 max_detections=100, map_sizes=()):
        self.anchors = np.asarray(anchors, np.float32)
        self.activation = activation
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.map_sizes = [tuple(s) for s in map_sizes]

    def get_config(self) -> dict:
        return {"anchors": self.anchors.tolist(), "activation": self.activation,
                "iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                "max_detections": self.max_detections, "map_sizes": self.map_sizes}

    def class_probabilities(self, logits):
        """(N, A, K+1) logits -> probabilities as trained (column 0: background)."""
        if self.activation == "sigmoid":
            return keras.ops.sigmoid(logits)
        return keras.ops.softmax(logits, axis=-1)

    def __call__(self, raw) -> dict:
        """{"boxes": (N, A, 4) codes, "classes": (N, A, K+1) logits} -> {"boxes": (N, D, 4)
        float32 [ymin, xmin, ymax, xmax] normalized and clipped to the image, "classes": (N, D)
        float32 0-based class index, "scores": (N, D) float32 best first, "count": (N,) float32
        valid rows}; rows past `count` are zeros. Classes and count are float32 as in TFLite's
        detection post-processing (what MediaPipe reads) and the TF Object Detection API's
        exports, so every runtime returns the same dtypes.

        NMS runs on the decoded boxes before clipping, as TFLite_Detection_PostProcess does, so
        the Keras model and a TFLite file agree."""
        import tensorflow as tf

        from mobilevision.ops import box_coder
        from mobilevision.ops.nms import multiclass_nms

        codes = keras.ops.cast(raw["boxes"], "float32")
        boxes = box_coder.decode(codes, keras.ops.convert_to_tensor(self.anchors))
        scores = self.class_probabilities(keras.ops.cast(raw["classes"], "float32"))[..., 1:]
        boxes, scores, classes, count = multiclass_nms(
            boxes, scores, iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold, max_detections=self.max_detections,
            max_per_class=self.max_detections, label_offset=0)
        return {"boxes": tf.clip_by_value(boxes, 0.0, 1.0),
                "classes": tf.cast(classes, tf.float32), "scores": scores,
                "count": tf.cast(count, tf.float32)}


@keras.saving.register_keras_serializable(package="mobilevision")
class SSDModel(DecodingModel):
    """The functional detector (`SSDModel(image, {"boxes": ..., "classes": ...})`) whose loss
    sees both outputs at once: the class targets pick the anchors whose boxes are trained, which
    a per-output `compile(loss=...)` cannot express. `decoder` (an `SSDDecoder`) is set by
    `build`."""

    ssd_loss = None
    decoder = None

    def decode(self, raw):
        return self.decoder(raw)

    def get_config(self):
        return {**super().get_config(), "decoder": self.decoder.get_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        decoder = config.pop("decoder")
        model = super().from_config(config, custom_objects)
        model.decoder = SSDDecoder(**decoder)
        return model

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.ssd_loss(y, y_pred, sample_weight)
        if self.losses:  # weight decay, which Keras scales for tf.distribute as for any model
            loss = loss + super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss


def anchor_generator(cfg) -> SSDAnchorGenerator:
    a = cfg.model.head.anchors
    return SSDAnchorGenerator(a.min_scale, a.max_scale, a.aspect_ratios)


def build(cfg, input_size=None) -> SSDModel:
    """The detector at `model.input_size` (or `input_size`), with its decoder: the anchors come
    from the maps the head built, the one place anchors meet the head."""
    size = tuple(input_size or cfg.model.input_size)
    h = cfg.model.head
    generator = anchor_generator(cfg)
    image = keras.Input(shape=(*size, 3), name="image")
    maps = build_backbone(cfg, h.features, size)(image)
    outputs, sizes = ssdlite_head([maps[name] for name, _, _ in head_taps(cfg)],
                                  cfg.model.num_classes, generator,
                                  depth_multiplier=cfg.model.backbone.alpha,
                                  bn_momentum=h.bn_momentum, weight_decay=kernel_weight_decay(cfg))
    anchors = generator(sizes, size)
    if outputs["boxes"].shape[1] != len(anchors):  # pragma: no cover - a head / generator bug
        raise AssertionError(f"the head returns {outputs['boxes'].shape[1]} boxes but its "
                             f"maps {sizes} have {len(anchors)} anchors")
    model = SSDModel(image, outputs, name=f"{cfg.model.backbone.name}_ssdlite")
    model.decoder = SSDDecoder(anchors, "sigmoid" if h.loss == "focal" else "softmax",
                               h.nms_iou, h.score_threshold, h.max_detections, sizes)
    return model


def compile(model, cfg, steps_per_epoch: int) -> None:
    from mobilevision.tasks.detection_loss import SSDLoss

    h = cfg.model.head
    model.ssd_loss = SSDLoss(classification=h.loss, negative_ratio=h.neg_pos_ratio)
    compile_model(model, cfg, steps_per_epoch, loss=None)


def transform(cfg, model):
    """-> fn(image uint8, {"boxes", "labels", "crowd"}, seed) -> (image (H, W, 3) float32 0..255,
    {"boxes": (A, 4) codes, "classes": (A,) targets}): SSD augmentation, then the boxes matched
    to `model`'s anchors (`matcher.encode_targets`)."""
    import tensorflow as tf

    from mobilevision.data import detection_augment as aug
    from mobilevision.ops.matcher import encode_targets

    size = tuple(model.input_shape[1:3])
    anchors = tf.constant(model.decoder.anchors)
    a, iou = cfg.data.augment, cfg.model.head.iou_threshold

    def fn(image, target, seed):
        boxes, labels, crowd = target["boxes"], target["labels"], target["crowd"]
        image = tf.cast(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(seed, 6)
        if a.photometric:
            image = aug.photometric(image, seeds[0])
        if a.zoom_out:
            image, boxes = aug.zoom_out(image, boxes, seeds[1], a.zoom_out_max)
        if a.ssd_crop:
            image, boxes, labels, crowd = aug.ssd_random_crop(
                image, boxes, labels, crowd, seeds[2], MIN_OBJECT_COVERED)
        if a.flip:
            image, boxes = aug.random_flip(image, boxes, seeds[3])
        image = tf.image.resize(image, size, method="bilinear")
        box_t, cls_t = encode_targets(anchors, boxes, labels, gt_ignore=crowd, iou_threshold=iou)
        return tf.ensure_shape(image, [*size, 3]), {"boxes": box_t, "classes": cls_t}

    return fn


def feature_maps(cfg, model) -> list[dict]:
    """Every map the head predicts on, the backbone taps then the extra layers, with its [h, w],
    stride (input height / h, so 320 px over 3 rows is 106.7) and anchors: what `profile`
    shows."""
    h = model.input_shape[1]
    sizes = model.decoder.map_sizes
    names = [name for name, _, _ in head_taps(cfg)]
    names += [f"ssd_extra_{i}" for i in range(1, len(sizes) - len(names) + 1)]
    per_location = anchor_generator(cfg).num_anchors_per_location(len(sizes))
    return [{"name": name, "size": [mh, mw], "stride": round(h / mh, 2),
             "anchors_per_location": n, "anchors": mh * mw * n}
            for name, (mh, mw), n in zip(names, sizes, per_location)]


# Evaluation ---------------------------------------------------------------------------------------


def evaluate(model, source, split: str, batch_size: int = 16) -> Evaluation:
    """COCOeval bbox metrics of `model.predict` on `split` (the dataset's category ids, original
    pixels); unreadable images are left out of the evaluation, not counted as missing every box.
    Files: `detections_<split>.json`, the detections as COCO results."""
    from mobilevision.tasks.coco_eval import CocoEvaluator, detections_to_coco

    coco = source.records(split)
    detections, read = [], []

    for batch in readable_batches(source, split, batch_size):
        for (index, image, _), result in zip(batch, model.predict([b[1] for b in batch])):
            r = coco.records[index]
            h, w = image.shape[:2]
            yxyx = result.boxes[:, [1, 0, 3, 2]] / np.array([w, h, w, h], np.float32)
            detections.extend(detections_to_coco(r.image_id, yxyx, result.scores,
                                                 result.classes + 1, r.width, r.height,
                                                 coco.category_ids))
            read.append(r.image_id)
    evaluator = CocoEvaluator(coco.instances)
    metrics = evaluator.evaluate(detections, image_ids=read)
    metrics.pop("summary_text", None)
    metrics.update({"split": split, "num_examples": len(read),
                    "dropped_boxes": dict(coco.dropped), "clipped_boxes": coco.clipped,
                    "skipped_annotations": coco.skipped})
    figures = {"per_class": ("AP", metrics["per_class_AP"])}
    if evaluator.precision is not None:
        figures["pr"] = (*evaluator.pr_curves(iou=0.5), 0.5)
    return Evaluation(metrics, figures, {f"detections_{split}.json": detections})


def pictures(model, source, split, evaluation):
    """The fixed sample (true boxes beside the predicted ones), AP per class and PR curves at
    IoU 0.5 from the evaluation's COCOeval."""
    from pathlib import Path

    from mobilevision import plots

    names = source.class_names
    samples = []
    for index, image, target in source.samples(split):
        h, w = image.shape[:2]
        keep = ~np.asarray(target["crowd"], bool)
        boxes = np.asarray(target["boxes"])[keep][:, [1, 0, 3, 2]] * [w, h, w, h]
        truth = plots.draw_detections(image, boxes, np.asarray(target["labels"])[keep], names)
        record = source.records(split).records[index]
        samples.append((truth, model.predict(image).plot(), Path(record.path).name, None))
    return plots.TaskPictures(samples=samples, names=names, **evaluation.figures)


TASK = Task("detection", build=build, compile=compile, transform=transform, evaluate=evaluate,
            pictures=pictures, monitor="AP", logged=COCO_METRICS)
