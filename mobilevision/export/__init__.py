"""Export a trained model for apps and servers: SavedModel, TFLite (float32, float16, int8, with
TFLite Metadata) and ONNX. The table of formats is `formats.FORMATS`; `export_model` writes any
of them from a Keras model that owns its decoder; `runtime.open_exported` runs a file. Every
file computes the decoded outputs `predict` returns and carries `runtime.INFO_FILE` (task,
labels, input size, config), so `mobilevision.load(file)` needs nothing else."""

from __future__ import annotations

import time
from pathlib import Path

from mobilevision.export.formats import FORMATS, ExportError, get_format

DEFAULT_CALIBRATION_IMAGES = 200
TFLITE_QUANTIZATION = {"tflite": "float32", "tflite_fp16": "float16", "tflite_int8": "int8"}


def parse_formats(text: str) -> list[str]:
    """"tflite,onnx" or "all" -> format names, each checked against the table."""
    names = list(FORMATS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ExportError("--format: name at least one format")
    return [get_format(n).name for n in names]


def export_model(model, formats, output_dir, *, name: str, task: str, labels: list[str],
                 config: dict | None = None, calibration=None,
                 calibration_images: int | None = None, input_type: str | None = None,
                 opset: int | None = None, nms: str | None = None, web_runtime=None,
                 samples=(), settings: dict | None = None, log=print) -> list[dict]:
    """Write `model` in each of `formats` into output_dir, with labels.txt beside them.

    Args:
      model: a Keras model that owns its decoder (`tasks.base.DecodingModel`), weights loaded.
      name: the files' stem (the config's name). task, labels, config: what the files carry in
        `runtime.INFO_FILE`, so they load without anything else.
      calibration: for tflite_int8, a function count -> (n, H, W, 3) float32 images prepared as
        `predict` prepares them (`calibration_images` of them; default 200).
      input_type, opset, nms, web_runtime: options of the formats that take them
        (formats.FORMATS[...].options); giving one to no format that takes it is an error
        rather than silently ignored. web_runtime: an installed @mediapipe/tasks-vision to copy
        into the web page (default: ./node_modules, else the page loads it from its CDN).
      samples: image files the web page bundles; settings: what predict uses that the page
        repeats (detection `draw_threshold`, classification `crop`).

    Returns one record per format: {"format", "path", "bytes", "seconds"}."""
    import json

    from mobilevision import __version__
    from mobilevision.export.runtime import INFO_FILE, ONNX_INFO_KEY
    from mobilevision.utils import atomic_write_text

    formats = [get_format(f) for f in formats]
    given = {"calibration_images": calibration_images, "input_type": input_type, "opset": opset,
             "nms": nms, "web_runtime": web_runtime}
    for option, value in given.items():
        if value is not None and not any(option in f.options for f in formats):
            takers = [f.name for f in FORMATS.values() if option in f.options]
            raise ExportError(f"--{option.replace('_', '-')} applies to {', '.join(takers)} only")
    if nms is not None and task != "detection":
        raise ExportError("--nms applies to detection models only")
    if calibration_images is not None and calibration_images < 1:
        raise ExportError(f"--calibration-images {calibration_images}: give at least 1")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(labels)
    info = json.dumps({"task": task, "labels": labels, "input_size": list(model.input_shape[1:3]),
                       "name": name, "version": __version__, "config": config}, indent=1)
    records = []

    def done(fmt, path, seconds):
        size = (sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
                if Path(path).is_dir() else Path(path).stat().st_size)
        records.append({"format": fmt.name, "path": str(path), "bytes": size,
                        "seconds": round(seconds, 1)})
        log(f"{fmt.name:12s} {path}  ({size / 2**20:.2f} MiB, {records[-1]['seconds']} s)")

    tflite = [f for f in formats if f.name in TFLITE_QUANTIZATION]
    if any(f.name == "web" for f in formats):  # the page runs the float32 and int8 files
        tflite += [get_format(n) for n in ("tflite", "tflite_int8") if get_format(n) not in tflite]
    if tflite:
        images = None
        if any(f.name == "tflite_int8" for f in tflite):
            if calibration is None:
                raise ExportError("tflite_int8 needs calibration images")
            images = calibration(calibration_images or DEFAULT_CALIBRATION_IMAGES)
            log(f"int8 calibration: {len(images)} images")
        _export_tflite(model, tflite, out, name, task, labels, info, images, input_type,
                       nms or "regular", done)
    if any(f.name == "web" for f in formats):
        start = time.perf_counter()
        page = _export_web(out, name, task, labels, model, web_runtime, samples, settings or {})
        done(get_format("web"), out / "web", time.perf_counter() - start)
        where = (f"MediaPipe Tasks Vision {page['mediapipe_version']} copied from "
                 f"{page['runtime_source']}" if page["runtime"] == "local" else
                 f"MediaPipe Tasks Vision from {page['runtime_source']} (the page needs the "
                 f"network){': ' + page['runtime_note'] if page['runtime_note'] else ''}")
        log(f"web page: {page['path']} ({where}); serve it with "
            f"python -m http.server -d {out / 'web'}")
    for fmt in formats:
        start = time.perf_counter()
        path = out / fmt.filename.format(name=name)
        if fmt.name == "saved_model":
            from mobilevision.export.saved_model import export_saved_model

            export_saved_model(model, path, {INFO_FILE: info})
            done(fmt, path, time.perf_counter() - start)
        elif fmt.name == "onnx":
            from mobilevision.export.onnx import export_onnx

            try:
                export_onnx(model, path, **({"opset": opset} if opset else {}),
                            metadata={ONNX_INFO_KEY: info})
            except ImportError as e:  # the [onnx] extra is not installed: a user error
                raise ExportError(str(e)) from e
            done(fmt, path, time.perf_counter() - start)
    # Last, so a failed export leaves no new labels beside older files.
    atomic_write_text(out / "labels.txt", "\n".join(labels) + "\n")
    order = {f.name: i for i, f in enumerate([*formats, *tflite])}
    return sorted(records, key=lambda r: order[r["format"]])


def _export_web(out, name, task, labels, model, runtime, samples, settings) -> dict:
    """The web page folder out/web, running the float32 and int8 files written beside it."""
    from mobilevision.export.web import write_web_page

    return write_web_page(
        out / "web", task=task, labels=labels, name=name, runtime_dir=runtime,
        models={"float32": out / get_format("tflite").filename.format(name=name),
                "int8": out / get_format("tflite_int8").filename.format(name=name)},
        samples=list(samples), input_size=tuple(model.input_shape[1:3]),
        draw_threshold=settings.get("draw_threshold", 0.3), eval_crop=settings.get("crop", 0.875))


def _export_tflite(model, formats, out, name, task, labels, info, calibration, input_type, nms,
                   done):
    from mobilevision import __version__
    from mobilevision.export.metadata import add_metadata
    from mobilevision.export.runtime import INFO_FILE
    from mobilevision.export.tflite import convert_tflite_many
    from mobilevision.utils import atomic_write_bytes

    quantizations = [TFLITE_QUANTIZATION[f.name] for f in formats]
    seconds = {}
    files = convert_tflite_many(model, quantizations, nms=nms, calibration=calibration,
                                input_type=input_type or "uint8", seconds=seconds)
    for fmt, q in zip(formats, quantizations):
        data = add_metadata(files[q], task=task, labels=labels,
                            name=f"{name} ({model.name}, {q})",
                            description=f"mobilevision {task} model exported from {name}",
                            version=__version__, extra_files={INFO_FILE: info})
        path = out / fmt.filename.format(name=name)
        atomic_write_bytes(path, data)
        done(fmt, path, seconds[q])
