"""Parity of exported files with the Keras model, on a trained run: the task's main metric of
each format, scored by the same evaluation code (`scripts/evaluate.py --model`), next to the
Keras checkpoint's, with the deltas checked against the export bars (float32 TFLite, SavedModel
and ONNX within 0.5 points, float16 within 1, int8 within 3).

    python benchmarks/export_parity.py runs/shapes_ssdlite
    python benchmarks/export_parity.py runs/shapes_deeplabv3 --formats tflite,tflite_int8

It exports the run's best checkpoint into <run>/export (every format unless --formats), then
evaluates the Keras model and each file on the validation split. A segmenter is evaluated at
one scale (eval.scales=[1.0]), the exported files having one input size. Writes
benchmarks/results/export_parity_<config>.json unless --json-out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import utc_timestamp, write_json  # noqa: E402

# Largest |metric delta| allowed, in points (metric x 100), per format.
BARS = {"saved_model": 0.5, "tflite": 0.5, "tflite_fp16": 1.0, "tflite_int8": 3.0, "onnx": 0.5}


def file_bytes(path: Path) -> int:
    """A file's size, or a folder's (a SavedModel): its files' sizes summed."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a training run folder (config.yaml + checkpoints/)")
    p.add_argument("--formats", default="all", help="comma-separated formats, or all")
    p.add_argument("--calibration-images", type=int, default=200)
    p.add_argument("--json-out", help="where to write the JSON (default benchmarks/results/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    import mobilevision as mv
    from mobilevision.config import load_config
    from mobilevision.export import parse_formats
    from mobilevision.tasks import TASKS
    from mobilevision.runs import find_checkpoint

    run = Path(args.run)
    overrides = list(args.overrides)
    if load_config(str(run / "config.yaml"), overrides).task == "segmentation":
        overrides.append("eval.scales=[1.0]")  # the exported files have one input size
    if find_checkpoint(run) is None:
        p.error(f"{run}: no checkpoint in checkpoints/")
    # The Keras model and every file are scored with the same config (the run's, with the
    # overrides): the same data and evaluation settings.
    model = mv.load(run, overrides=overrides)
    cfg, weights = model.config, Path(model.path)
    formats = parse_formats(args.formats)
    int8 = "tflite_int8" in formats
    start = time.perf_counter()
    files = model.export(formats, run / "export",
                         calibration_images=args.calibration_images if int8 else None)
    export_seconds = round(time.perf_counter() - start, 1)
    key = TASKS[cfg.task].monitor
    split = cfg.data.val_split
    start = time.perf_counter()
    keras_value = float(model.evaluate(split)[key])
    rows = [{"format": "keras", "file": str(weights), "bytes": weights.stat().st_size,
             key: keras_value, "eval_seconds": round(time.perf_counter() - start, 1)}]
    for fmt, path in files.items():
        start = time.perf_counter()
        exported = mv.load(path, config=str(run / "config.yaml"), overrides=overrides)
        value = float(exported.evaluate(split)[key])
        delta = 100 * (value - keras_value)
        rows.append({"format": fmt, "file": str(path), "bytes": file_bytes(Path(path)),
                     key: value, "delta_points": round(delta, 3), "bar_points": BARS[fmt],
                     "met": abs(delta) <= BARS[fmt],
                     "eval_seconds": round(time.perf_counter() - start, 1)})
    print(f"\n{cfg.name}: {key} on split {split!r} ({len(rows) - 1} exported files, written in "
          f"{export_seconds:.0f} s)")
    print(f"{'format':12s} {'MiB':>7s} {key:>8s} {'delta pts':>10s} {'bar':>5s}  verdict")
    for row in rows:
        verdict = "" if row["format"] == "keras" else ("met" if row["met"] else "NOT met")
        delta = "" if row["format"] == "keras" else f"{row['delta_points']:+.3f}"
        bar = "" if row["format"] == "keras" else f"{row['bar_points']:.1f}"
        print(f"{row['format']:12s} {row['bytes'] / 2**20:7.2f} {row[key]:8.4f} {delta:>10s} "
              f"{bar:>5s}  {verdict}")
    out = args.json_out or str(Path(__file__).parent / "results" / f"export_parity_{cfg.name}.json")
    write_json(out, {"timestamp": utc_timestamp(), "run": str(run), "metric": key,
                     "split": split, "export_seconds": export_seconds, "rows": rows})
    return 0 if all(r.get("met", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
