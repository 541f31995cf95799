"""TFLite's detection post-processing op, as the converter makes it, in place of the detector's
decoder (`tasks.detection.SSDDecoder`) in a TFLite file.

A TFLite detector ends in `TFLite_Detection_PostProcess`, the NMS kernel that LiteRT and
MediaPipe ship, made from the placeholder function here with the decoder's own anchors, box coder
scales and NMS settings; its boxes are then clipped to the image as the decoder clips them, so
the file returns the decoder's structure: boxes, classes, scores, count.
"""

from __future__ import annotations

import numpy as np

from mobilevision.ops import box_coder

# The TFLite converter replaces a tf.function carrying this `experimental_implements` name by
# the custom op of the same name, which LiteRT's builtin op resolver and MediaPipe both run.
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


def detection_postprocess_fn(decoder, num_classes: int, nms: str = "regular"):
    """A placeholder tf.function the converter swaps for TFLite_Detection_PostProcess, with the
    op's attributes from `decoder` (an SSDDecoder: thresholds, max detections) and the box
    coder's scales. Its TensorFlow body is never run by a runtime; it only fixes the signature.
    nms: "regular" is per-class NMS, the decoder's algorithm; "fast" the op's class-agnostic
    variant (one class per box)."""
    import tensorflow as tf

    if nms not in ("regular", "fast"):
        raise ValueError(f"nms must be 'regular' or 'fast', got {nms!r}")
    sy, sx, sh, sw = box_coder.SCALES
    attrs = {"max_detections": ("i", decoder.max_detections),
             "max_classes_per_detection": ("i", 1),
             "detections_per_class": ("i", decoder.max_detections),
             "use_regular_nms": ("b", "true" if nms == "regular" else "false"),
             "nms_score_threshold": ("f", decoder.score_threshold),
             "nms_iou_threshold": ("f", decoder.iou_threshold),
             "y_scale": ("f", sy), "x_scale": ("f", sx), "h_scale": ("f", sh), "w_scale": ("f", sw),
             "num_classes": ("i", num_classes)}
    spec = " ".join([f'name: "{DETECTION_POSTPROCESS}"'] + [
        f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()])

    @tf.function(experimental_implements=spec)
    def postprocess(box_encodings, class_predictions, anchors):
        del box_encodings, class_predictions, anchors
        zero = tf.constant(0.0, tf.float32)
        return (tf.identity(zero, name="boxes"), tf.identity(zero, name="classes"),
                tf.identity(zero, name="scores"), tf.identity(zero, name="num_detections"))

    return postprocess


def tflite_detections(model, images, nms: str = "regular") -> dict:
    """The detector `model` (an SSDModel) on images, decoded by TFLite_Detection_PostProcess:
    {"boxes" clipped to 0..1, "classes", "scores", "count"}, all float32, the anchors embedded
    in the file."""
    import tensorflow as tf

    from mobilevision.ops.boxes import yxyx_to_center

    decoder = model.decoder
    out = model(images, training=False)
    # The op wants anchors in center form (ycenter, xcenter, h, w) and codes (ty, tx, th, tw).
    anchors = tf.constant(yxyx_to_center(decoder.anchors).astype(np.float32))
    num_classes = int(out["classes"].shape[-1]) - 1
    boxes, classes, scores, count = detection_postprocess_fn(decoder, num_classes, nms)(
        out["boxes"], decoder.class_probabilities(out["classes"]), anchors)
    return {"boxes": tf.clip_by_value(boxes, 0.0, 1.0), "classes": classes, "scores": scores,
            "count": count}
