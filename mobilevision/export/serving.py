"""TFLite's detection post-processing op, as the converter makes it.

What each task's exported files compute is the task's own (`Task.export_outputs`,
`Task.tflite_outputs`); a TFLite detector ends in `TFLite_Detection_PostProcess`, the NMS kernel
that LiteRT and MediaPipe ship, made from the placeholder function here.
"""

from __future__ import annotations


from mobilevision.ops import box_coder

# The TFLite converter replaces a tf.function carrying this `experimental_implements` name by
# the custom op of the same name, which LiteRT's builtin op resolver and MediaPipe both run.
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


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
