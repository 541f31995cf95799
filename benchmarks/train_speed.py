#!/usr/bin/env python
"""Training speed: our classifier against keras.applications.MobileNetV2, and the input pipeline.

    python benchmarks/train_speed.py                      # imagenet_mobilenetv2.yaml, 224, batch 32
    python benchmarks/train_speed.py --quick              # smoke test, under a minute on 2 cores
    python benchmarks/train_speed.py --precision mixed_bfloat16 model.backbone.alpha=0.5

A benchmark, not a test: every figure is measured in this one process and the verdicts are
ratios, so a slow or busy machine slows both sides alike.

1. Train step. Our model (`tasks.build_model` + the classification task's `compile`) and
   keras.applications.MobileNetV2 (weights=None, same alpha, input shape and classes, compiled
   by the same `compile`: same RMSprop/schedule, loss and metrics; jit_compile=False for both)
   each run `model.fit` on the same in-memory dataset of random pixel batches, so only the
   train step is timed. Runs alternate ours, keras, ours, keras ... and the median of each is
   reported. Target: ours / keras >= 0.95. Ours does a little more per step by design: the Rescaling layer that lets it
   take raw 0..255 pixels, and the config's dropout and L2 weight decay.
2. Input pipeline alone. N class-folder JPEG files (the synthetic shapes) at the benchmark
   resolution are decoded, augmented and batched by our real training dataset
   (`tasks.training_dataset`, at our model's input size), with no model. Its images/s next to
   the train step's gives the pipeline headroom (should be well above 1).
3. End to end. Our model fits on that real pipeline (one run); end-to-end / train-step images/s
   near 1 means the pipeline does not starve training.

Writes the figures as JSON (--json-out, default benchmarks/results/train_speed.json, atomically).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    alternating_fit, apply_defaults, check_counts, check_sizes, config_name, device_description,
    fmt_runs, make_log, pipeline_runs, run_benchmark, table_lines, table_width, time_fit,
    utc_timestamp, versions)

TARGET_RATIO = 0.95
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "train_speed.json"
QUICK = {"batch_size": 8, "size": 96, "steps": 5, "warmup": 3, "repeats": 1, "pipeline_images": 64}
QUICK_OVERRIDES = ["model.backbone.alpha=0.35"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Images/s of our classifier's train step vs keras.applications.MobileNetV2, "
                    "and of the input pipeline alone.",
        epilog="Trailing key=value arguments override the config (e.g. model.backbone.alpha=0.5). "
               "--size and --batch-size win over model.input_size and train.batch_size.")
    p.add_argument("--config", default="imagenet_mobilenetv2.yaml",
                   help="config path or bundled name (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (--quick: 8)")
    p.add_argument("--size", type=int, default=None,
                   help="square input resolution, a multiple of 32; default 224 (--quick: 96)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run; default 20 (--quick: 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before a model's first run (later runs: 1); default 3")
    p.add_argument("--repeats", type=int, default=None,
                   help="train-step runs per model, alternating ours/keras, and pipeline runs; "
                        "medians are reported; default 3 (--quick: 1)")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                   help="Keras dtype policy for both models (default: %(default)s)")
    p.add_argument("--pipeline-images", type=int, default=None,
                   help="JPEG files generated for the pipeline measurement; default 256 (--quick: 64)")
    p.add_argument("--file-size", default=None, metavar="H[xW]",
                   help="size of the generated JPEG files; default --size (ImageNet's are about "
                        "375x500, which costs more to decode)")
    p.add_argument("--json-out", default=str(DEFAULT_JSON),
                   help="where to write the figures ('-' for stdout; default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: batch 8, size 96, 5 steps, 1 repeat, alpha 0.35 (< 1 min)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    full = {"batch_size": 32, "size": 224, "steps": 20, "warmup": 3, "repeats": 3, "pipeline_images": 256}
    apply_defaults(args, QUICK if args.quick else full)
    check_counts(p, args, ("batch_size", "steps", "repeats", "pipeline_images"))
    check_sizes(p, args, min_file_side=8)
    return args


# Measurement ------------------------------------------------------------------------------------

def random_batches(batch_size: int, size: int, num_classes: int, seed: int, distinct: int = 2):
    """An endless tf.data dataset cycling over `distinct` fixed batches of random pixels
    (uint8 drawn, float32 0..255 as our pipeline yields) and one-hot labels; prefetched."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (distinct, batch_size, size, size, 3), dtype=np.uint8).astype(np.float32)
    y = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, (distinct, batch_size))]
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().prefetch(tf.data.AUTOTUNE)


# Pipeline data ----------------------------------------------------------------------------------

def write_jpeg_folders(root: Path, num_images: int, size, seed: int) -> dict:
    """Class-folder dataset of `num_images` synthetic shapes of `size` (int or (H, W)) under
    root/train.

    The shapes generator writes every 4th image as PNG (to exercise both decoders); here those are
    re-encoded as JPEG at the generator's quality, so the pipeline decodes JPEG only, as on
    ImageNet. Returns {"classes": [...], "files": n, "jpeg": n, "image_size": [h, w]}."""
    import cv2

    from mobilevision.data import shapes

    summary = shapes.generate_classification(root, num_train=num_images, num_val=0, image_size=size,
                                             seed=seed)
    for png in sorted((root / "train").glob("*/*.png")):
        image = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if image is None or not cv2.imwrite(str(png.with_suffix(".jpg")), image,
                                            [cv2.IMWRITE_JPEG_QUALITY, shapes._JPEG_QUALITY]):
            raise OSError(f"could not re-encode {png} as JPEG")
        png.unlink()
    files = [p for p in (root / "train").glob("*/*") if p.is_file()]
    return {"classes": summary["classes"], "files": len(files),
            "jpeg": sum(p.suffix == ".jpg" for p in files), "image_size": summary["image_size"]}


def as_num_classes(ds, num_classes: int, image_shape):
    """Relabel one-hot batches of the 5 shapes classes as one-hot of `num_classes` (class index
    modulo num_classes), so the model measured on random batches also fits the real pipeline.
    Images get the static shape `image_shape` (B, H, W, 3) of the random batches, so fit reuses
    the traced train step instead of tracing a second one."""
    import tensorflow as tf

    def relabel(x, y, *rest):  # rest: a sample weight, should the pipeline add one
        x = tf.ensure_shape(x, image_shape)
        y = tf.one_hot(tf.argmax(y, axis=-1, output_type=tf.int32) % num_classes, num_classes)
        return (x, y, *rest)

    return ds.map(relabel)


# Report -----------------------------------------------------------------------------------------

def format_table(r: dict) -> str:
    s, t, p, e = r["setup"], r["train_step"], r["pipeline"], r["end_to_end"]
    files = f"{p['files']} JPEG, {'x'.join(map(str, p['image_size']))}"
    rows = [  # (label, value, value format, what follows)
        ("train step, mobilevision", t["ours"]["images_per_sec"], ".1f", fmt_runs(t["ours"]["runs"])),
        ("train step, keras.applications", t["keras_applications"]["images_per_sec"], ".1f",
         fmt_runs(t["keras_applications"]["runs"])),
        ("  ratio ours / keras", t["ratio"], ".3f",
         f"target >= {t['target']:.2f}: {'OK' if t['meets_target'] else 'BELOW TARGET'}"),
        (f"input pipeline alone ({files})", p["images_per_sec"], ".1f", fmt_runs(p["runs"])),
        ("  headroom pipeline / train step", p["headroom"], ".2f",
         "> 1: the pipeline keeps up" if p["headroom"] > 1 else "< 1: THE PIPELINE IS THE BOTTLENECK"),
        ("end to end, mobilevision on pipeline", e["images_per_sec"], ".1f", fmt_runs(e["runs"])),
        ("  end to end / train step", e["ratio_to_train_step"], ".3f",
         "about 1: no starvation" if e["ratio_to_train_step"] >= 0.9
         else "< 0.9: TRAINING WAITS FOR INPUT (or a busy machine)"),
    ]
    width = table_width(rows)
    lines = [
        f"train_speed: {s['config']}  alpha {s['alpha']}  {s['size']}x{s['size']}  batch {s['batch_size']}  "
        f"{s['num_classes']} classes  {s['precision']}",
        f"  {s['device']}; TF {s['tensorflow']}, Keras {s['keras']}",
        f"  {s['steps']} timed steps per run after {s['warmup']} warmup ({s['warmup_later_runs']} in later "
        f"runs); train step: {s['repeats']} alternating run(s) each, median",
        "",
        *table_lines(rows, width),
    ]
    if s["quick"]:
        lines.append("  (--quick is a smoke test: too few steps for the ratios to mean anything)")
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------

def run(args) -> dict:
    import keras

    import mobilevision as mv
    from mobilevision.tasks import TASKS, build_model, training_dataset
    from mobilevision.tasks.trainer import set_precision
    from mobilevision.utils import set_seed

    b, s = args.batch_size, args.size
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides,
                 f"model.input_size=[{s}, {s}]", f"train.batch_size={b}", f"train.precision={args.precision}"]
    cfg = mv.load_config(args.config, overrides)
    set_seed(cfg.seed)
    set_precision(cfg)
    alpha, k = cfg.model.backbone.alpha, cfg.model.num_classes
    log = make_log(args.json_out)

    # 1. Train step on random in-memory batches: ours and keras.applications, same compile.
    log("building both models ...")
    compile_model = TASKS["classification"].compile
    steps_per_epoch = 1000  # only shapes the learning-rate schedule; any value times the same
    ours = build_model(cfg)
    compile_model(ours, cfg, steps_per_epoch)
    theirs = keras.applications.MobileNetV2(input_shape=(s, s, 3), alpha=alpha, include_top=True,
                                            weights=None, classes=k)
    if args.precision != "float32":
        # The Keras mixed-precision guide's rule: the model outputs float32 (the top-5 metric
        # refuses bfloat16); ours does this in its `predictions` layer.
        probs = keras.layers.Activation("linear", dtype="float32", name="predictions_float32")(theirs.output)
        theirs = keras.Model(theirs.input, probs, name=theirs.name)
    compile_model(theirs, cfg, steps_per_epoch)
    for model in (ours, theirs):
        model.jit_compile = False
    memory_ds = random_batches(b, s, k, cfg.seed)

    # Ours, keras, ours, keras ...: each model's first run traces its train step during warmup.
    runs, med = alternating_fit({"ours": ours, "keras_applications": theirs}, memory_ds, b,
                                args.steps, args.warmup, args.repeats, log)
    ratio = med["ours"] / med["keras_applications"]
    params = {"ours": int(ours.count_params()), "keras_applications": int(theirs.count_params())}
    del theirs

    # 2 and 3. The real input pipeline over JPEG files, alone and feeding our model.
    with tempfile.TemporaryDirectory(prefix="mv_train_speed_") as tmp:
        root = Path(tmp) / "shapes"
        fh, fw = args.file_size
        log(f"writing {args.pipeline_images} {fh}x{fw} JPEG files ...")
        data = write_jpeg_folders(root, args.pipeline_images, (fh, fw), cfg.seed)
        pcfg = mv.load_config(args.config, [
            *overrides, "data.format=folder", "data.synthetic=null", f"data.root={root}",
            "data.train_split=train", f"model.num_classes={len(data['classes'])}"])
        pipeline_ds, n = training_dataset(pcfg, ours)
        pipeline_ds = pipeline_ds.repeat()
        # At least two passes over the files, as many batches as a train-step run, and 2 s.
        batches = max(args.steps, math.ceil(2 * n / b))
        pipe_runs, pipe_batches = pipeline_runs(pipeline_ds, batches, max(args.warmup, 1),
                                                args.repeats, log)
        # One end-to-end run: it only has to show starvation, and each run costs as much as a
        # train-step run (the default benchmark stays within ~6 minutes on 2 cores).
        log("end to end, ours on the pipeline ...")
        e2e = time_fit(ours, as_num_classes(pipeline_ds, k, (b, s, s, 3)), b, args.steps,
                       max(args.warmup, 1))
    pipe = statistics.median(pipe_runs)
    log("done")

    return {
        "benchmark": "train_speed",
        "time": utc_timestamp(),
        "setup": {
            "config": config_name(cfg, args.config),
            "overrides": overrides, "quick": args.quick,
            "alpha": alpha, "size": s, "batch_size": b, "num_classes": k, "precision": args.precision,
            "optimizer": cfg.train.optimizer.name, "loss": "categorical_crossentropy",
            "label_smoothing": cfg.train.label_smoothing, "jit_compile": False,
            "steps": args.steps, "warmup": args.warmup, "warmup_later_runs": min(args.warmup, 1),
            "repeats": args.repeats,
            "device": device_description(), **versions(),
        },
        "train_step": {
            "ours": {"images_per_sec": med["ours"], "runs": runs["ours"], "params": params["ours"]},
            "keras_applications": {"images_per_sec": med["keras_applications"],
                                   "runs": runs["keras_applications"],
                                   "params": params["keras_applications"]},
            "ratio": ratio, "target": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO,
        },
        "pipeline": {
            "files": data["files"], "jpeg": data["jpeg"], "image_size": data["image_size"],
            "augment": {"random_resized_crop": pcfg.data.augment.random_resized_crop,
                        "crop_scale": pcfg.data.augment.crop_scale, "flip": pcfg.data.augment.flip},
            "batches_timed": pipe_batches, "images_per_sec": pipe, "runs": pipe_runs,
            "headroom": pipe / med["ours"],
        },
        "end_to_end": {"images_per_sec": e2e, "runs": [e2e], "ratio_to_train_step": e2e / med["ours"]},
    }


def main(argv=None) -> int:
    return run_benchmark("train_speed.py", parse_args(argv), run, format_table)


if __name__ == "__main__":
    sys.exit(main())
