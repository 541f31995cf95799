"""What an exported file computes: per task, a TensorFlow function from images to decoded results.

`decoded_outputs` is the SavedModel's (post-processing in TensorFlow ops, any batch);
`tflite_outputs` is the TFLite file's, where a detector ends in TFLite's own
`TFLite_Detection_PostProcess` op (the runtimes' fast NMS kernel, anchors embedded as a constant)
and a segmenter returns only its scores (what MediaPipe's ImageSegmenter reads). Both take
float32 pixels 0..255 (N, H, W, 3): the model normalizes inside.
"""

from __future__ import annotations

import numpy as np

from mobilevision.ops import box_coder

# The TFLite converter replaces a tf.function carrying this `experimental_implements` name by
# the custom op of the same name, which LiteRT's builtin op resolver and MediaPipe both run.
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


def class_scores(cfg, logits):
    """Detector class logits (N, A, K+1) -> per-class probabilities (N, A, K+1), the way the
    model was trained: sigmoid for the focal loss, else softmax. Column 0 is background."""
    import tensorflow as tf

    if cfg.model.head.loss == "focal":
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits, axis=-1)


def decoded_outputs(task, model, images) -> dict:
    """images (N, H, W, 3) float32 0..255 -> the task's decoded outputs (see formats.TASK_OUTPUTS).
    Detection applies the same decode, clipping and per-class NMS as `DetectionTask.postprocess`,
    with classes as 0-based indices into the label file."""
    import tensorflow as tf

    out = model(images, training=False)
    name = task.name
    if name == "classification":
        return {"probabilities": out}
    if name == "segmentation":
        scores = tf.nn.softmax(out, axis=-1)
        return {"scores": scores, "labels": tf.argmax(scores, axis=-1, output_type=tf.int32)}
    from mobilevision.ops.boxes import clip_boxes
    from mobilevision.ops.nms import multiclass_nms

    h = task.cfg.model.head
    anchors = tf.constant(task.anchors())
    boxes = clip_boxes(box_coder.decode(out["boxes"], anchors))
    scores = class_scores(task.cfg, out["classes"])[..., 1:]
    boxes, scores, classes, count = multiclass_nms(
        boxes, scores, iou_threshold=h.nms_iou, score_threshold=h.score_threshold,
        max_detections=h.max_detections, label_offset=0)
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}


def tflite_outputs(task, model, images, nms: str = "regular") -> dict:
    """images (1, H, W, 3) float32 0..255 -> the TFLite file's outputs: detection `boxes`
    (1, D, 4), `classes` (1, D) float 0-based, `scores` (1, D), `count` (1,) from
    TFLite_Detection_PostProcess; classification `probabilities`; segmentation `scores`.

    nms: "regular" is per-class NMS, the same algorithm as Keras evaluation (what parity is
    measured with); "fast" is the op's class-agnostic variant (one class per box), quicker on
    phones and what the TF Object Detection API exports by default."""
    import tensorflow as tf

    if task.name != "detection":
        out = decoded_outputs(task, model, images)
        out.pop("labels", None)
        return out
    out = model(images, training=False)
    post = detection_postprocess_fn(task.cfg, nms)
    # The op wants anchors in center form (ycenter, xcenter, h, w), codes (ty, tx, th, tw).
    from mobilevision.ops.boxes import yxyx_to_center

    anchors = tf.constant(yxyx_to_center(task.anchors()).astype(np.float32))
    boxes, classes, scores, count = post(out["boxes"], class_scores(task.cfg, out["classes"]),
                                         anchors)
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}


def detection_postprocess_fn(cfg, nms: str = "regular"):
    """A placeholder tf.function the converter swaps for TFLite_Detection_PostProcess, with the
    op's attributes from `model.head` (thresholds, max detections) and the box coder's scales.
    Its TensorFlow body is never run by a runtime; it only fixes the signature."""
    import tensorflow as tf

    if nms not in ("regular", "fast"):
        raise ValueError(f"nms must be 'regular' or 'fast', got {nms!r}")
    h = cfg.model.head
    sy, sx, sh, sw = box_coder.SCALES
    attrs = {"max_detections": ("i", h.max_detections),
             "max_classes_per_detection": ("i", 1),
             "detections_per_class": ("i", h.max_detections),
             "use_regular_nms": ("b", "true" if nms == "regular" else "false"),
             "nms_score_threshold": ("f", h.score_threshold),
             "nms_iou_threshold": ("f", h.nms_iou),
             "y_scale": ("f", sy), "x_scale": ("f", sx), "h_scale": ("f", sh), "w_scale": ("f", sw),
             "num_classes": ("i", cfg.model.num_classes)}
    spec = " ".join([f'name: "{DETECTION_POSTPROCESS}"'] + [
        f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()])

    @tf.function(experimental_implements=spec)
    def postprocess(box_encodings, class_predictions, anchors):
        del box_encodings, class_predictions, anchors
        zero = tf.constant(0.0, tf.float32)
        return (tf.identity(zero, name="boxes"), tf.identity(zero, name="classes"),
                tf.identity(zero, name="scores"), tf.identity(zero, name="num_detections"))

    return postprocess
