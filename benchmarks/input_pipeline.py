#!/usr/bin/env python
"""Input pipeline speed: each task's real training pipeline against a plain tf.data baseline.

    python benchmarks/input_pipeline.py                 # 200 images per dataset, 3 repeats
    python benchmarks/input_pipeline.py --quick         # smoke test, about a minute on 2 cores
    python benchmarks/input_pipeline.py --tasks detection --images 500

A benchmark, not a test: every figure is measured in this one process, and the verdicts are
ratios of pipelines that ran in turn on the same files, so a busy machine slows all alike.

For each task, synthetic-shapes files are written to a temp dir in the task's real format:

- classification: ImageNet-like class folders of 375x500 JPEGs (imagenet_mobilenetv2.yaml, 224);
- detection: COCO-like 480x640 JPEGs with boxes in an instances JSON (coco_ssdlite.yaml, 320);
- segmentation: VOC-like 480x640 JPEGs and palette PNG label maps (voc_deeplabv3.yaml, 512).

Then four pipelines over the same files, with the config's input size and --batch-size, are
iterated with no model (`common.time_pipeline`: images/s after warmup batches), alternating
baseline, checked decode, ours, python, baseline, ... (--repeats; medians reported):

- ours: `tasks.training_dataset(cfg, model)`, the real training pipeline with every check and
  the config's augmentation (and, for a detector, target encoding against the anchors of the
  config's model, built once per task for that), decoding in the graph (`data.decode=graph`, the
  default);
- python: the same with `data.decode=python`, each image through Pillow in `tf.numpy_function`
  (the pipeline before issue 14), for the before/after;
- baseline: plain tf.data with no checks: shuffle, `tf.io.read_file`, `tf.io.decode_jpeg` (TF's
  default IDCT), resize to the input size, random flip, batch, prefetch;
- checked decode: the baseline with our decode in place of its own (the verified file table,
  `decode_file`: accurate IDCT, EXIF orientation, unreadable files filtered out), so the cost of
  the checks shows apart from the cost of the tasks' augmentation.

Each figure is images/s (wall), images/s per core (wall / the cores this process may use), and
images per CPU-second (per core-second actually used: the process's user + system time while the
pipeline ran, warmup batches included). The verdict compares images per CPU-second, which other
jobs on the machine disturb far less than wall time: target ours >= 0.8x the baseline per core.
On an idle machine whose cores the pipeline fills, the two per-core figures agree.

Also the one-time verification pass (`mobilevision.data.verify`) on the fresh files: seconds and
CPU-seconds per image when nothing is cached (Pillow and TF decode each file and compare), and per
image when everything is (a stat per file), with the estimate for COCO train2017 (118,287 images).

Writes the figures as JSON (--json-out, default benchmarks/results/input_pipeline.json,
atomically) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    apply_defaults, check_counts, device_description, fmt_runs, make_log, run_benchmark,
    time_pipeline, utc_timestamp, versions)

TARGET_RATIO = 0.8
COCO_TRAIN2017 = 118_287
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "input_pipeline.json"
TASKS = {  # task -> (config, file size (H, W), what the data is like)
    "classification": ("imagenet_mobilenetv2.yaml", (375, 500), "ImageNet-like class folders"),
    "detection": ("coco_ssdlite.yaml", (480, 640), "COCO-like JPEGs + instances JSON"),
    "segmentation": ("voc_deeplabv3.yaml", (480, 640), "VOC-like JPEGs + palette PNG masks"),
}
MODES = ("baseline", "checked_decode", "ours", "python")
QUICK = {"images": 48, "batch_size": 16, "warmup": 2, "repeats": 1, "min_seconds": 1.0}
FULL = {"images": 200, "batch_size": 32, "warmup": 3, "repeats": 3, "min_seconds": 3.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Images/s (per CPU core) of each task's training input pipeline, graph and "
                    "Python decoding, against a plain tf.data baseline; the verification cost.")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--images", type=int, default=None,
                   help="files written per task; default 200 (--quick: 48)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (--quick: 16)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches per run; default 3")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs of each pipeline, alternating; medians; default 3 (--quick: 1)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="each run lasts at least this long and two passes; default 3 (--quick: 1)")
    p.add_argument("--json-out", default=str(DEFAULT_JSON),
                   help="where to write the figures ('-' for stdout; default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke test: 48 images, batch 16, 1 repeat")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every task's pipeline (e.g. "
                        "data.augment.photometric=false, to see what it costs)")
    args = p.parse_args(argv)
    apply_defaults(args, QUICK if args.quick else FULL)
    check_counts(p, args, ("images", "batch_size", "repeats"))
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        p.error(f"--tasks: expected a comma-separated subset of {','.join(TASKS)}, "
                f"got {','.join(unknown) or 'nothing'}")
    if args.images < args.batch_size:
        p.error("--images must be at least --batch-size (training batches drop the remainder)")
    return args


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Data -------------------------------------------------------------------------------------------


def write_data(task: str, root: Path, n: int, size, seed: int = 0):
    """Write `n` training files for `task` under root. Returns (config overrides that point the
    task's config at them, [image paths], [label-map paths] or [])."""
    from mobilevision.data import shapes

    if task == "classification":
        from train_speed import write_jpeg_folders  # noqa: PLC0415  (benchmarks/ is on the path)

        data = write_jpeg_folders(root, n, size, seed)
        paths = sorted(str(p) for p in (root / "train").glob("*/*.jpg"))
        return ["data.format=folder", f"model.num_classes={len(data['classes'])}"], paths, []
    if task == "detection":
        shapes.generate_detection(root, num_train=n, num_val=0, image_size=size, seed=seed)
        paths = sorted(str(p) for p in (root / "train" / "images").glob("*.jpg"))
        return (["data.format=coco", "data.coco.images={split}/images",
                 f"model.num_classes={len(shapes.SHAPE_CLASSES)}"], paths, [])
    shapes.generate_segmentation(root, num_train=n, num_val=0, image_size=size, seed=seed)
    paths = sorted(str(p) for p in (root / "JPEGImages").glob("train_*.jpg"))
    masks = sorted(str(p) for p in (root / "SegmentationClass").glob("train_*.png"))
    return (["data.format=voc", "data.classes_file=classes.txt",
             f"model.num_classes={len(shapes.SHAPE_CLASSES) + 1}"], paths, masks)


# Pipelines --------------------------------------------------------------------------------------


def baseline_dataset(paths, size, batch_size: int, seed: int, verified: bool = False):
    """Plain tf.data, no checks: shuffle, read, decode_jpeg, resize, random flip, batch. With
    `verified`, our checked decode instead (`image_files` + `decode_file`: the verified file
    table, accurate IDCT, EXIF orientation, the unreadable filtered out), the rest alike: what the
    checks cost, apart from the tasks' augmentation."""
    import tensorflow as tf

    from mobilevision.data.pipeline import decode_file, image_files

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return image, True

    ds = tf.data.Dataset.from_tensor_slices(image_files(paths) if verified else paths)
    ds = ds.shuffle(len(paths), seed=seed)
    ds = ds.map(decode_file if verified else load, num_parallel_calls=tf.data.AUTOTUNE)
    if verified:
        ds = ds.filter(lambda image, ok: ok)
    ds = ds.map(lambda image, ok: (tf.image.random_flip_left_right(tf.image.resize(image, size)),
                                   0),  # (images, targets), as a task yields
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)


def measure(ds, batches: int, warmup: int, min_seconds: float) -> dict:
    """One `time_pipeline` run with the process CPU time it took."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    rate, timed = time_pipeline(ds, batches, warmup, min_seconds=min_seconds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"images_per_sec": rate, "batches": timed, "cpu_seconds": cpu, "wall_seconds": wall}


def verification_cost(kind: str, paths) -> dict:
    """Seconds and CPU-seconds per file of the verification pass with nothing cached (a fresh
    cache file), then with everything cached."""
    from mobilevision.data import verify

    fn = verify.verify_images if kind == "image" else verify.verify_label_maps
    out = {}
    for state in ("cold", "cached"):
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = fn(paths, quiet=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        expected = len(paths) if state == "cold" else 0
        if result.checked != expected:
            raise RuntimeError(f"{state} verification opened {result.checked} files, "
                               f"expected {expected}")
        out[state] = {"seconds_per_file": wall / len(paths),
                      "cpu_seconds_per_file": cpu / len(paths)}
    out["copied"] = len(result.copied)
    out["skipped"] = len(result.skipped)
    return out


def run_task(task: str, args, tmp: Path, log) -> dict:
    import mobilevision as mv
    from mobilevision.tasks import build_model, training_dataset

    config, size, what = TASKS[task]
    root = tmp / task
    log(f"{task}: writing {args.images} {size[0]}x{size[1]} files ({what}) ...")
    overrides, paths, masks = write_data(task, root, args.images, size)
    log(f"{task}: verification pass, cold then cached ...")
    cost = {"images": verification_cost("image", paths)}
    if masks:
        cost["label_maps"] = verification_cost("label", masks)

    common = [*overrides, "model.backbone.weights=null", "data.synthetic=null", f"data.root={root}",
              "data.train_split=train",
              f"train.batch_size={args.batch_size}", *args.overrides]
    datasets, cfg, model = {}, None, None
    for mode in ("ours", "python"):
        decode = "graph" if mode == "ours" else "python"
        cfg = mv.load_config(config, [*common, f"data.decode={decode}"])
        if model is None:  # what the pipeline follows: its input size (a detector: its anchors)
            log(f"{task}: building the model the pipeline feeds ...")
            model = build_model(cfg)
        log(f"{task}: building the training pipeline, data.decode={decode} ...")
        ds, n = training_dataset(cfg, model)
        datasets[mode] = ds.repeat()
    del model
    input_size = tuple(cfg.model.input_size)
    datasets["baseline"] = baseline_dataset(paths, input_size, args.batch_size, cfg.seed)
    datasets["checked_decode"] = baseline_dataset(paths, input_size, args.batch_size, cfg.seed,
                                                  verified=True)

    batches = max(4, math.ceil(2 * len(paths) / args.batch_size))  # at least two passes
    runs = {mode: [] for mode in MODES}
    for i in range(args.repeats):
        for mode in MODES:
            log(f"{task}: [{i + 1}/{args.repeats}] {mode} ...")
            runs[mode].append(measure(datasets[mode], batches, args.warmup, args.min_seconds))
    cores = cpu_cores()
    figures = {}
    for mode in MODES:
        rate = statistics.median(r["images_per_sec"] for r in runs[mode])
        # Images the pipeline produced while the CPU time was counted: warmup batches included.
        per_cpu = statistics.median(
            (r["batches"] + args.warmup) * args.batch_size / r["cpu_seconds"] for r in runs[mode])
        figures[mode] = {"images_per_sec": rate, "per_core": rate / cores,
                         "images_per_cpu_second": per_cpu,
                         "runs": [r["images_per_sec"] for r in runs[mode]]}
    base = figures["baseline"]
    ratios = {mode: {"per_core": figures[mode]["per_core"] / base["per_core"],
                     "per_cpu_second": figures[mode]["images_per_cpu_second"]
                     / base["images_per_cpu_second"]} for mode in MODES[1:]}
    return {"config": config, "data": what, "files": len(paths), "file_size": list(size),
            "input_size": list(input_size), "batch_size": args.batch_size, "cores": cores,
            "pipelines": figures, "ratio_to_baseline": ratios,
            "ours_over_python": (figures["ours"]["images_per_sec"]
                                 / figures["python"]["images_per_sec"]),
            "target": TARGET_RATIO,
            "meets_target": ratios["ours"]["per_cpu_second"] >= TARGET_RATIO,
            "verification": cost}


def run(args) -> dict:
    log = make_log(args.json_out)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mv_input_pipeline_") as tmp:
        for task in args.tasks:
            results[task] = run_task(task, args, Path(tmp), log)
    coco = results.get("detection", next(iter(results.values())))["verification"]["images"]
    cores = cpu_cores()
    estimate = {"images": COCO_TRAIN2017,
                "cpu_hours": coco["cold"]["cpu_seconds_per_file"] * COCO_TRAIN2017 / 3600,
                "minutes_on_this_machine": coco["cold"]["seconds_per_file"] * COCO_TRAIN2017 / 60,
                "cores": cores,
                "cached_seconds": coco["cached"]["seconds_per_file"] * COCO_TRAIN2017}
    log("done")
    return {"benchmark": "input_pipeline", "time": utc_timestamp(),
            "setup": {"quick": args.quick, "overrides": args.overrides, "images": args.images,
                      "batch_size": args.batch_size,
                      "warmup": args.warmup, "repeats": args.repeats,
                      "min_seconds": args.min_seconds, "device": device_description(),
                      **versions()},
            "tasks": results, "coco_train2017_verification_estimate": estimate}


# Report -----------------------------------------------------------------------------------------


def format_table(r: dict) -> str:
    s = r["setup"]
    lines = [f"input_pipeline: {s['images']} files per task, batch {s['batch_size']}, "
             f"{s['repeats']} alternating run(s) each, median",
             f"  {s['device']}; TF {s['tensorflow']}", ""]
    head = f"  {'':34s}{'images/s':>9s}{'per core':>10s}{'per CPU-s':>11s}   runs (images/s)"
    for task, t in r["tasks"].items():
        lines += [f"{task}: {t['data']}, {t['files']} files {'x'.join(map(str, t['file_size']))} "
                  f"-> {'x'.join(map(str, t['input_size']))} ({t['config']}), {t['cores']} cores",
                  head]
        for mode, label in (("baseline", "plain tf.data baseline"),
                            ("checked_decode", "baseline with our checked decode"),
                            ("ours", "ours, data.decode=graph"),
                            ("python", "before, data.decode=python")):
            f = t["pipelines"][mode]
            lines.append(f"  {label:34s}{f['images_per_sec']:9.1f}{f['per_core']:10.1f}"
                         f"{f['images_per_cpu_second']:11.1f}   {fmt_runs(f['runs'])}")
        ours = t["ratio_to_baseline"]["ours"]
        py = t["ratio_to_baseline"]["python"]
        checked = t["ratio_to_baseline"]["checked_decode"]
        lines.append(f"    checked decode / baseline: {checked['per_cpu_second']:.2f} per "
                     f"CPU-second ({checked['per_core']:.2f} per core of wall time): the checks' "
                     f"cost")
        lines.append(f"    ours / baseline: {ours['per_cpu_second']:.2f} per CPU-second "
                     f"({ours['per_core']:.2f} per core of wall time)   target >= "
                     f"{t['target']:.1f}: {'OK' if t['meets_target'] else 'BELOW TARGET'}")
        lines.append(f"    before / baseline: {py['per_cpu_second']:.2f} per CPU-second "
                     f"({py['per_core']:.2f} per core of wall time); ours / before "
                     f"{t['ours_over_python']:.2f}x images/s")
        for kind, v in t["verification"].items():
            lines.append(f"    verification of the {kind.replace('_', ' ')}: "
                         f"{1000 * v['cold']['seconds_per_file']:.2f} ms a file "
                         f"({1000 * v['cold']['cpu_seconds_per_file']:.2f} CPU-ms) once, "
                         f"{1000 * v['cached']['seconds_per_file']:.3f} ms cached; "
                         f"{v['copied']} copied, {v['skipped']} skipped")
        lines.append("")
    e = r["coco_train2017_verification_estimate"]
    lines.append(f"COCO train2017 ({e['images']} images) verification, estimated from the "
                 f"detection files: {60 * e['cpu_hours']:.0f} CPU-minutes once (about "
                 f"{60 * e['cpu_hours'] / e['cores']:.0f} min on {e['cores']} idle cores; "
                 f"{e['minutes_on_this_machine']:.0f} min at this run's wall time); "
                 f"{e['cached_seconds']:.1f} s each later run")
    if s["quick"]:
        lines.append("(--quick is a smoke test: too short for the ratios to mean much)")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_benchmark("input_pipeline.py", parse_args(argv), run, format_table)


if __name__ == "__main__":
    sys.exit(main())
