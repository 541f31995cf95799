"""The export table: one row per format. It drives the command line's choices, validation and
error messages, the file names, and the export page's tables (`formats_markdown`; a test checks
docs/export.md holds the current rendering).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    name: str          # what --format takes
    filename: str      # written into --output; {name} is the config's name
    runtime: str       # what loads it
    computes: str      # what the file computes, for every task
    options: tuple = ()  # export options that apply (`--calibration-images` ...)
    extra: str = ""    # pip extra it needs beyond the base install


FORMATS = {f.name: f for f in (
    ExportFormat("saved_model", "{name}_saved_model", "TensorFlow, TF Serving",
                 "signature `serving_default` takes uint8 images (N, H, W, 3) and returns decoded "
                 "results; `serving_float` takes float32 0..255"),
    ExportFormat("tflite", "{name}.tflite", "LiteRT, MediaPipe Tasks",
                 "float32, batch 1, with TFLite Metadata (normalization, labels, output names)",
                 options=("nms",)),
    ExportFormat("tflite_fp16", "{name}_fp16.tflite", "LiteRT, MediaPipe Tasks",
                 "as `tflite` with float16 weights (half the size; computes in float32 on CPU)",
                 options=("nms",)),
    ExportFormat("tflite_int8", "{name}_int8.tflite", "LiteRT, MediaPipe Tasks",
                 "full-integer int8, calibrated on `--calibration-images` of the train split; "
                 "uint8 input (or float32 with `--input-type float32`), float32 outputs",
                 options=("calibration_images", "input_type", "nms")),
    ExportFormat("onnx", "{name}.onnx", "onnxruntime",
                 "float32 input 0..255, dynamic batch, decoded results (NMS as ONNX "
                 "NonMaxSuppression)", options=("opset",), extra="onnx"),
    ExportFormat("web", "web", "a browser (MediaPipe Tasks for Web)",
                 "a folder to host as it is: a page running the `tflite` and `tflite_int8` "
                 "files (written too) on images, the bundled samples and the camera "
                 "([web.md](web.md))",
                 options=("calibration_images", "input_type", "nms", "web_runtime")),
)}

# The decoded outputs, per task: what the Keras model's `predict` returns (its decoder) and what
# every file computes, by these names, so each runtime hands them over as they come.
TASK_OUTPUTS = {
    "classification": "`probabilities` (N, K)",
    "detection": "`boxes` (N, D, 4) [ymin, xmin, ymax, xmax] normalized and clipped to the image, "
                 "`classes` (N, D) index into labels.txt, `scores` (N, D) best first, `count` "
                 "(N,) valid rows; all float32 (as TFLite's `TFLite_Detection_PostProcess`, "
                 "which a TFLite file ends in, with the anchors embedded)",
    "segmentation": "`scores` (N, H, W, K) softmax at the input resolution",
}


class ExportError(ValueError):
    """An export request that cannot be met (unknown format, option not for this format ...)."""


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ExportError(f"--format {name!r}: unknown export format; choose one of "
                          f"{', '.join(FORMATS)}")
    return FORMATS[name]


def formats_markdown() -> str:
    """docs/export.md's tables, rendered from FORMATS and TASK_OUTPUTS."""
    rows = ["| format | file | runs in | computes |", "|---|---|---|---|"]
    for f in FORMATS.values():
        extra = f" (needs `pip install \"mobilevision[{f.extra}]\"`)" if f.extra else ""
        rows.append(f"| `{f.name}` | `{f.filename.format(name='<config>')}` | {f.runtime} | "
                    f"{f.computes}{extra} |")
    rows += ["", "| task | decoded outputs |", "|---|---|"]
    rows += [f"| {task} | {text} |" for task, text in TASK_OUTPUTS.items()]
    return "\n".join(rows)
