#!/usr/bin/env python
"""Inference latency: each task's default model in Keras and as TFLite float32 / int8 in LiteRT
(XNNPACK) on 1 and 2 threads, against keras.applications.MobileNetV2 converted the same way.

    python benchmarks/latency.py                          # every task, threads 1,2: ~3 min on 2 cores
    python benchmarks/latency.py --quick                  # smoke test, about 1.5 min on 2 cores
    python benchmarks/latency.py --tasks detection --threads 1,2,4 --runs 50

A benchmark, not a test: every figure is measured in this one process, the reference included.

1. Models. Each task's default config (imagenet_mobilenetv2.yaml, coco_ssdlite.yaml,
   voc_deeplabv3.yaml) built without weight files (model.weights=null, model.backbone.weights=
   null): random weights, which change no op and no shape. The reference is
   keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)): alpha 1.0, with the
   1000-class top. MAdds come from `profile_model` (conv + dense multiply-adds, the network's
   only: a detector's box decoding and NMS are not counted).
2. Conversion. Ours through the export path (`convert_tflite_many`: a SavedModel tracking the
   model's variables -> TFLiteConverter, builtin ops only), so a detector's file ends in
   TFLite_Detection_PostProcess (decode + NMS) as shipped. The reference, and our detector's
   network alone (raw box codes and class logits, no post-process op), go through the same
   SavedModel route and the same converter settings. int8 is full-integer with uint8 input,
   calibrated on --calibration-images random-pixel images: no dataset is needed, and latency does
   not depend on the calibration (the int8 files' accuracy is not measured here).
3. TFLite latency. LiteRT's Interpreter with num_threads N (XNNPACK, its default CPU delegate;
   how many of each file's ops XNNPACK took is reported), one fixed input set once, `invoke()`
   timed: --runs invokes per repeat after --warmup untimed ones, for every file and thread count,
   each of ours right after the reference file of the same precision, the order reversed on
   every other repeat, so drift hits ours and the reference alike. Figures are medians over all
   runs; MAdds per second = MAdds / median latency.
4. Keras latency, batch 1. The app-like call: `model(x, training=False)` in a tf.function (traced
   once), outputs fetched as numpy; `model.predict_on_batch` too, which adds Keras's per-call
   overhead and, for our models, the decoder (`predict` returns decoded outputs: the
   segmenter's softmax, the detector's box decoding and NMS). TensorFlow runs on --keras-threads
   intra- and inter-op threads (set before it starts, so one count per process). The detector's
   call figure is its network only.

Targets: our SSDLite-320 float32 reaches at least 0.8x the reference's float32 MAdds per second
(judged on the shipped file, whose latency includes the post-process op that MAdds do not count,
and on the network alone), and int8 is at least 1.5x faster than float32 for every model; each
thread count is judged on its own.

Writes the figures as JSON (--json-out, default benchmarks/results/latency.json, atomically) and
prints a table.
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
    apply_defaults, check_counts, device_description, make_log, run_benchmark, time_calls,
    utc_timestamp, versions)

TASK_CONFIGS = {"classification": "imagenet_mobilenetv2.yaml", "detection": "coco_ssdlite.yaml",
                "segmentation": "voc_deeplabv3.yaml"}
WEIGHTS_FREE = ["model.weights=null", "model.backbone.weights=null"]
REFERENCE_SIZE = 224
# A trained detector's background class takes most of the probability: on the shapes demo's
# trained SSDLite (val images), 1.33% of its (anchor, class) scores pass the 0.01 NMS score
# threshold (36 per image), and its background logit leads the best object logit by 9.0 (median).
# With random weights every score is about 1 / (K + 1), above the threshold: NMS's worst case.
TRAINED_CANDIDATE_FRACTION = 0.0133
TRAINED_BACKGROUND_LEAD = 9.0


def trained_like_class_bias(model, num_classes: int, fraction: float, seed: int = 0) -> None:
    """Give the detector's random class predictors a trained detector's score distribution: the
    background bias leads by TRAINED_BACKGROUND_LEAD, and `fraction` of each predictor's (anchor,
    class) channels, chosen at random, get the same bias as background, so their scores (about
    1/2) pass the NMS threshold at every location and the others (about e^-9) do not."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = num_classes + 1
    layers = [l for l in model.layers if l.name.startswith("ssd_class_") and
              l.name.endswith("_conv")]
    assert layers, "no SSDLite class predictor found"
    for layer in layers:
        kernel, bias = layer.get_weights()
        bias = np.zeros_like(bias)
        bias[0::k] = TRAINED_BACKGROUND_LEAD  # channel c is anchor c // k, class c % k
        objects = np.flatnonzero(np.arange(bias.size) % k)
        chosen = rng.choice(objects, size=int(round(fraction * objects.size)), replace=False)
        bias[chosen] = TRAINED_BACKGROUND_LEAD
        layer.set_weights([kernel, bias])
QUANTIZATIONS = ("float32", "int8")
TARGET_MADDS_RATIO = 0.8     # our SSDLite float32 MAdds/s over the reference's
TARGET_INT8_SPEEDUP = 1.5    # float32 latency over int8 latency, every model
BUSY = 0.1                   # other processes' share of the cores above which figures are noisy

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latency.json"
FULL = {"runs": 30, "warmup": 5, "repeats": 3, "keras_runs": 10, "calibration_images": 16}
QUICK = {"runs": 5, "warmup": 2, "repeats": 1, "keras_runs": 3, "calibration_images": 4}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Batch-1 latency and MAdds per second of each task's default model in Keras "
                    "and as TFLite float32 / int8 (LiteRT, XNNPACK), against "
                    "keras.applications.MobileNetV2 converted the same way.")
    p.add_argument("--tasks", default=",".join(TASK_CONFIGS),
                   help="comma-separated subset of %(default)s (the reference is always measured)")
    p.add_argument("--threads", default="1,2",
                   help="comma-separated LiteRT thread counts (default: %(default)s)")
    p.add_argument("--keras-threads", type=int, default=None,
                   help="TensorFlow intra- and inter-op threads for the Keras figures "
                        "(default: the largest of --threads)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed invokes per file, thread count and repeat; default 30 (--quick: 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed invokes before a file's first repeat (later repeats: 1); "
                        "default 5 (--quick: 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds over every file and thread count, alternating ours and the "
                        "reference; default 3 (--quick: 1)")
    p.add_argument("--keras-runs", type=int, default=None,
                   help="timed Keras calls per model and repeat; default 10 (--quick: 3)")
    p.add_argument("--calibration-images", type=int, default=None,
                   help="random-pixel images calibrating int8; default 16 (--quick: 4)")
    p.add_argument("--nms", default="regular", choices=["regular", "fast"],
                   help="the detector file's NMS, as `export --nms` (default: %(default)s)")
    p.add_argument("--json-out", default=str(DEFAULT_JSON),
                   help="where to write the figures ('-' for stdout; default: %(default)s)")
    p.add_argument("--candidate-fraction", type=float, default=TRAINED_CANDIDATE_FRACTION,
                   help="detection: the fraction of (anchor, class) scores made to pass the "
                        "NMS score threshold, as in a trained detector (default "
                        f"{TRAINED_CANDIDATE_FRACTION}, measured on the shapes demo's); 0 keeps "
                        "the random weights' scores, which all pass (NMS's worst case)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 5 runs, 1 repeat, 4 calibration images (about 1.5 min on 2 "
                        "cores; conversion dominates)")
    args = p.parse_args(argv)
    apply_defaults(args, QUICK if args.quick else FULL)
    check_counts(p, args, ("runs", "repeats", "keras_runs", "calibration_images"))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_CONFIGS]
    if unknown or not tasks:
        p.error(f"--tasks: unknown {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(TASK_CONFIGS)}")
    args.tasks = list(dict.fromkeys(tasks))
    try:
        threads = list(dict.fromkeys(int(t) for t in args.threads.split(",") if t.strip()))
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--threads expects positive integers separated by commas, got {args.threads!r}")
    args.threads = threads
    if args.keras_threads is None:
        args.keras_threads = max(args.threads)
    if args.keras_threads < 1:
        p.error("--keras-threads must be at least 1")
    return args


# Conversion -------------------------------------------------------------------------------------

def random_images(rng, count: int, size):
    """(count, H, W, 3) float32 pixels 0..255 drawn uniformly (integers, as a camera gives)."""
    import numpy as np

    return rng.integers(0, 256, (count, *size, 3)).astype(np.float32)


def convert_plain(model, size, calibration) -> dict[str, bytes]:
    """`model` (image -> raw outputs, no post-processing) as TFLite float32 and int8, through the
    export path's SavedModel writer and converter settings (`export.tflite.convert_saved_model`:
    builtin ops only and no custom op, full-integer int8 with uint8 input, the weight check)."""
    import tensorflow as tf

    from mobilevision.export.saved_model import write_saved_model
    from mobilevision.export.tflite import convert_saved_model

    h, w = size

    def serve(image):
        return model(image, training=False)

    with tempfile.TemporaryDirectory(prefix="mv_latency_") as tmp:
        path = write_saved_model(Path(tmp) / "saved_model", model, {
            "serving_default": (serve, [tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])})
        return {q: convert_saved_model(model, path, q, calibration=calibration,
                                       input_type="uint8") for q in QUANTIZATIONS}


# LiteRT -----------------------------------------------------------------------------------------

def xnnpack_coverage(interpreter) -> dict:
    """Which of a file's ops XNNPACK runs, from the interpreter's nodes after delegation: each
    DELEGATE node replaced the ops between its inputs and outputs. Returns {"partitions",
    "ops", "delegated", "not_delegated": {op name: count}}; {"error": ...} if LiteRT's (private)
    node listing is unavailable."""
    try:
        nodes = interpreter._get_ops_details()
    except Exception as e:  # a private API: the figure is a diagnostic, never a failure
        return {"error": f"{type(e).__name__}: {e}"}
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    ops = {n["index"]: n for n in nodes if n["op_name"] != "DELEGATE"}
    producer = {t: i for i, n in ops.items() for t in n["outputs"]}
    inside = set()
    for d in delegates:
        # Walk back from the partition's outputs to its inputs; weights have no producer.
        stop, todo, seen = set(d["inputs"]), list(d["outputs"]), set()
        while todo:
            t = todo.pop()
            if t in stop or t in seen:
                continue
            seen.add(t)
            i = producer.get(t)
            if i is not None and i not in inside:
                inside.add(i)
                todo.extend(ops[i]["inputs"])
    left = {}
    for i, n in ops.items():
        if i not in inside:
            left[n["op_name"]] = left.get(n["op_name"], 0) + 1
    return {"partitions": len(delegates), "ops": len(ops), "delegated": len(inside),
            "not_delegated": left}


class TimedFile:
    """One TFLite file in LiteRT at one thread count, its input set once; `time(runs, warmup)`
    appends the wall time of each of `runs` invokes (ms) after `warmup` untimed ones."""

    def __init__(self, data: bytes, threads: int, seed: int):
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=data, num_threads=threads)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise RuntimeError(f"expected one input, the file has {len(inputs)}")
        d = inputs[0]
        image = random_images(np.random.default_rng(seed), 1, d["shape"][1:3])
        self.input_dtype = np.dtype(d["dtype"]).name
        self.interpreter.set_tensor(d["index"], image.astype(d["dtype"]))
        self.runs_ms, self.repeat_medians_ms = [], []

    def time(self, runs: int, warmup: int) -> None:
        timed = time_calls(self.interpreter.invoke, runs, warmup)
        self.runs_ms += timed["runs_ms"]
        self.repeat_medians_ms.append(timed["median_ms"])


def summary(runs_ms: list, repeat_medians_ms: list, madds: int) -> dict:
    """Median / p90 over all runs, the MAdds per second at the median, the per-repeat medians
    and their spread ((max - min) / median)."""
    ordered = sorted(runs_ms)
    med = statistics.median(runs_ms)
    return {"median_ms": med,
            "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
            "gmadds_per_sec": madds / (med / 1000) / 1e9,
            "repeat_medians_ms": repeat_medians_ms,
            "repeat_spread": (max(repeat_medians_ms) - min(repeat_medians_ms)) / med,
            "runs_ms": runs_ms}


def cpu_busy(seconds: float = 1.0):
    """The share of all cores busy over `seconds` (from /proc/stat), while this process waits:
    what other processes take. None where /proc/stat is unreadable."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (i1 - i0) / max(t1 - t0, 1)


# Keras ------------------------------------------------------------------------------------------

def keras_calls(model, size, seed: int):
    """({"call": fn, "predict_on_batch": fn}) on one fixed random image; each returns once the
    outputs are numpy arrays, as an app reads them. The tf.function is traced here."""
    import numpy as np
    import tensorflow as tf

    x = tf.constant(random_images(np.random.default_rng(seed), 1, size))
    forward = tf.function(lambda x: model(x, training=False))

    def call():
        return tf.nest.map_structure(lambda t: t.numpy(), forward(x))

    call()  # trace outside the timings
    return {"call": call, "predict_on_batch": lambda: model.predict_on_batch(x)}


def time_keras(fn, runs: int, warmup: int) -> list[float]:
    return time_calls(fn, runs, warmup)["runs_ms"]


# Report -----------------------------------------------------------------------------------------

def busy(share) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def format_table(r: dict) -> str:
    s, models, targets = r["setup"], r["models"], r["targets"]
    threads = s["threads"]
    label_w = 46
    cell = "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>20s}" for t in threads)
    sub = "".join(f"{'ms':>9s}{'GMAdds/s':>11s}" for _ in threads)
    lines = [
        f"latency: batch 1; each task's default config (random weights) and "
        f"keras.applications.MobileNetV2 {REFERENCE_SIZE} (the reference)",
        f"  {s['device']}; LiteRT {s['litert']} (XNNPACK); TF {s['tensorflow']}, Keras {s['keras']}",
        f"  TFLite: median of {s['runs']} invoke() x {s['repeats']} repeat(s) per file and thread "
        f"count after {s['warmup']} warmup, each of ours next to the reference, order reversed "
        f"every other repeat",
        f"  int8: full-integer, uint8 input, calibrated on {s['calibration_images']} random-pixel "
        f"images (latency does not depend on calibration; accuracy not measured)",
        f"  other processes' CPU use (1 s samples, share of {s['cores']} cores): "
        f"{busy(s['cpu_busy_start'])} before, {busy(s['cpu_busy_end'])} after"
        + ("  -- A BUSY MACHINE: the figures are noisy, 2 threads most of all"
           if max(s["cpu_busy_start"] or 0, s["cpu_busy_end"] or 0) > BUSY else ""),
        "",
        f"  {'TFLite (LiteRT + XNNPACK)':{label_w}s}{'MAdds':>8s}{cell}",
        f"  {'':{label_w}s}{'':8s}{sub}",
    ]
    for key, m in models.items():
        lines.append(f"  {m['title']}")
        for q in QUANTIZATIONS:
            f = m["tflite"][q]
            cells = "".join(f"{f['threads'][str(t)]['median_ms']:9.1f}"
                            f"{f['threads'][str(t)]['gmadds_per_sec']:11.1f}" for t in threads)
            lines.append(f"    {m['row'] + ' ' + q:{label_w - 2}s}{f['madds'] / 1e9:7.3f}G{cells}")
        sp = "".join(f"{m['int8_speedup'][str(t)]:9.2f}x{'':10s}" for t in threads)
        lines.append(f"    {'  speed-up float32 / int8':{label_w - 2}s}{'':8s}{sp}")

    lines += ["", f"  {'Keras, batch 1 (TF threads ' + str(s['keras_threads']) + ')':{label_w}s}"
                  f"{'MAdds':>8s}{'call ms':>10s}{'GMAdds/s':>10s}{'predict_on_batch ms':>21s}"]
    for key, m in models.items():
        k = m.get("keras")
        if not k:
            continue
        lines.append(f"    {m['keras_row']:{label_w - 2}s}{k['madds'] / 1e9:7.3f}G"
                     f"{k['call']['median_ms']:10.1f}{k['call']['gmadds_per_sec']:10.1f}"
                     f"{k['predict_on_batch']['median_ms']:21.1f}")
    lines.append("    (call: model(x, training=False) in a tf.function, outputs to numpy; "
                 "predict_on_batch adds Keras's per-call overhead and our models' decoder: "
                 "the detector's NMS)")

    lines += ["", "  targets (each thread count on its own)"]
    mr = targets["madds_ratio"]
    if mr:
        lines.append(f"    SSDLite float32 MAdds/s / reference float32 MAdds/s, target >= "
                     f"{TARGET_MADDS_RATIO}:")
        for item in mr:
            cells = "   ".join(f"{t} thr {item['ratio'][str(t)]:5.2f}  "
                               f"{_verdict(item['met'][str(t)]):7s}" for t in threads)
            lines.append(f"      {item['label']:{label_w - 4}s}{cells}")
    lines.append(f"    int8 speed-up (float32 ms / int8 ms), target >= {TARGET_INT8_SPEEDUP}:")
    for item in targets["int8_speedup"]:
        cells = "   ".join(f"{t} thr {item['speedup'][str(t)]:5.2f}x "
                           f"{_verdict(item['met'][str(t)]):7s}" for t in threads)
        lines.append(f"      {item['label']:{label_w - 4}s}{cells}")

    lines += ["", "  notes"]
    lines += [f"    {n}" for n in r["notes"]]
    lines.append("    conversion (SavedModel + float32 + int8), s: " + ", ".join(
        f"{m['short']} {m['conversion_s']:.0f}" for m in models.values()))
    if s["quick"]:
        lines.append("  (--quick is a smoke test: too few runs for the figures to be more than "
                     "indicative)")
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------

def run(args) -> dict:
    import numpy as np
    import tensorflow as tf

    # Before TensorFlow starts: one thread setting for every Keras figure in this process.
    tf.config.threading.set_intra_op_parallelism_threads(args.keras_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.keras_threads)

    import keras

    from mobilevision.config import load_config
    from mobilevision.export.tflite import convert_tflite_many, op_names
    from mobilevision.profile import profile_model
    from mobilevision.tasks import build_model

    log = make_log(args.json_out)
    busy_start = cpu_busy()
    rng = np.random.default_rng(0)
    models = {}   # key -> description and figures, in table order
    files = {}    # (key, quantization) -> TFLite bytes
    keras_models = {}  # key -> (keras model, input size)
    notes = []

    def add(key, title, short, row, madds_stats, data, conversion_s, keras_row=None):
        """Record one model's two files; MAdds as each runtime computes them (TFLite runs a
        dilated conv natively unless the file kept SPACE_TO_BATCH_ND; see profile_model)."""
        tflite = {}
        for q in QUANTIZATIONS:
            native = "SPACE_TO_BATCH_ND" not in op_names(data[q])
            madds = madds_stats["madds"] - (madds_stats["atrous_padding_madds"] if native else 0)
            tflite[q] = {"bytes": len(data[q]), "madds": int(madds),
                         "ops": sorted(set(op_names(data[q]))), "threads": {}}
            files[(key, q)] = data[q]
        models[key] = {"title": title, "short": short, "row": row, "keras_row": keras_row,
                       "madds": int(madds_stats["madds"]), "params": int(madds_stats["params"]),
                       "atrous_padding_madds": int(madds_stats["atrous_padding_madds"]),
                       "conversion_s": conversion_s, "tflite": tflite}

    # 1-2. Build and convert: the reference, then each task's default model.
    log(f"building keras.applications.MobileNetV2 {REFERENCE_SIZE} and converting it ...")
    ref_size = (REFERENCE_SIZE, REFERENCE_SIZE)
    ref = keras.applications.MobileNetV2(weights=None, input_shape=(*ref_size, 3))
    t = time.perf_counter()
    # Calibrated on raw pixels like ours (its own preprocessing would map them to -1..1): the
    # uint8 input's one QUANTIZE op costs the same either way.
    data = convert_plain(ref, ref_size, random_images(rng, args.calibration_images, ref_size))
    add("reference", f"reference: keras.applications.MobileNetV2 {REFERENCE_SIZE}, alpha 1.0, "
        f"1000 classes", "reference", "TFLite", profile_model(ref), data,
        time.perf_counter() - t, keras_row="reference")
    keras_models["reference"] = (ref, ref_size)

    for name in args.tasks:
        config = TASK_CONFIGS[name]
        log(f"building {config} and converting it ...")
        cfg = load_config(config, WEIGHTS_FREE)
        model = build_model(cfg)
        if name == "detection" and args.candidate_fraction > 0:
            trained_like_class_bias(model, cfg.model.num_classes, args.candidate_fraction)
        size = tuple(cfg.model.input_size)
        stats = profile_model(model)
        calibration = random_images(rng, args.calibration_images, size)
        alpha = cfg.model.backbone.alpha
        t = time.perf_counter()
        data = convert_tflite_many(model, QUANTIZATIONS, nms=args.nms,
                                   calibration=calibration, input_type="uint8")
        conv_s = time.perf_counter() - t
        title = (f"{name}: {config}, {size[0]}x{size[1]}, alpha {alpha}, "
                 f"{cfg.model.num_classes} classes")
        if name != "detection":
            add(name, title, name, "TFLite", stats, data, conv_s, keras_row=name)
        else:
            add(name, title + " (MAdds: the network's only)", "detection",
                f"TFLite + post-process ({args.nms} NMS)", stats, data, conv_s,
                keras_row="detection (call: network only, no NMS)")
            log("converting the detector's network alone (no post-process op) ...")
            t = time.perf_counter()
            net = convert_plain(model, size, calibration)
            add("detection_network", "detection, the network alone (raw box codes and class "
                "logits; the same model)", "detection network", "TFLite, network only", stats,
                net, time.perf_counter() - t)
            # What the NMS works on: (anchor, class) scores above the op's threshold.
            x = tf.constant(random_images(np.random.default_rng(1), 1, size))
            logits = model(x, training=False)["classes"]
            # As the file's op gets them: the decoder's class probabilities.
            scores = np.asarray(model.decoder.class_probabilities(logits))[..., 1:]
            above = int((scores >= cfg.model.head.score_threshold).sum())
            models["detection"]["nms_candidates"] = {
                "above_threshold": above, "scores": int(scores.size),
                "score_threshold": cfg.model.head.score_threshold,
                "max_score": float(scores.max())}
            notes.append(
                f"detection: the shipped file's latency includes TFLite_Detection_PostProcess "
                f"({args.nms} NMS), which MAdds do not count. "
                + (f"The class predictors' biases were set so that {args.candidate_fraction:.2%} "
                   f"of the scores pass, as in a trained detector (--candidate-fraction): "
                   if args.candidate_fraction > 0 else "Random weights: ")
                + f"{above} of "
                f"{scores.size} (anchor, class) scores are >= the {cfg.model.head.score_threshold} "
                f"score threshold (max {scores.max():.4f}): "
                + ("nearly every one is an NMS candidate, the op's worst case (a trained "
                   "detector, whose background class takes most of the probability, leaves it "
                   "far fewer)" if above > 0.5 * scores.size else
                   "the NMS load of this run")
                + "; the network-only rows are the like-for-like comparison with the reference.")
        keras_models[name] = (model, size)

    # 3. LiteRT: every file at every thread count, ours each right after the reference file of
    # the same precision; the order reversed on every other repeat.
    log(f"LiteRT interpreters ({len(files)} files x threads {','.join(map(str, args.threads))}) ...")
    timed = {(key, q, th): TimedFile(files[(key, q)], th, seed=1)
             for (key, q) in files for th in args.threads}
    order = []
    for th in args.threads:
        for q in QUANTIZATIONS:
            for key in models:
                if key != "reference":
                    order += [("reference", q, th), (key, q, th)]
    for i in range(args.repeats):
        log(f"[{i + 1}/{args.repeats}] TFLite invokes ...")
        seq = order if i % 2 == 0 else order[::-1]
        done = set()
        for slot in seq:
            first = slot not in done
            timed[slot].time(args.runs, args.warmup if (i == 0 and first) else (1 if first else 0))
            done.add(slot)
    for (key, q, th), f in timed.items():
        entry = models[key]["tflite"][q]
        entry["threads"][str(th)] = summary(f.runs_ms, f.repeat_medians_ms, entry["madds"])
        entry["input_dtype"] = f.input_dtype
        if "xnnpack" not in entry:
            entry["xnnpack"] = xnnpack_coverage(f.interpreter)
    del timed

    # 4. Keras at batch 1, ours each right after the reference.
    log(f"Keras batch-1 calls (TF threads {args.keras_threads}) ...")
    calls = {key: keras_calls(m, size, seed=1) for key, (m, size) in keras_models.items()}
    keras_runs = {key: {"call": [], "predict_on_batch": []} for key in calls}
    korder = [k for key in calls if key != "reference" for k in ("reference", key)] or ["reference"]
    for i in range(args.repeats):
        log(f"[{i + 1}/{args.repeats}] Keras calls ...")
        done = set()
        for key in (korder if i % 2 == 0 else korder[::-1]):
            keras_runs[key]["call"] += time_keras(calls[key]["call"], args.keras_runs,
                                                  0 if key in done else 1)
            done.add(key)
    for key in calls:  # predict_on_batch once per model: the overhead, not the ratio, matters
        keras_runs[key]["predict_on_batch"] = time_keras(calls[key]["predict_on_batch"],
                                                         args.keras_runs, 2)
    for key, runs in keras_runs.items():
        madds = models[key]["madds"]
        models[key]["keras"] = {"madds": madds, **{
            kind: {k: v for k, v in summary(runs[kind], [statistics.median(runs[kind])], madds).items()
                   if k not in ("repeat_medians_ms", "repeat_spread")}
            for kind in ("call", "predict_on_batch")}}
    log("done")
    busy_end = cpu_busy()

    # Ratios and verdicts.
    for m in models.values():
        m["int8_speedup"] = {str(th): m["tflite"]["float32"]["threads"][str(th)]["median_ms"]
                             / m["tflite"]["int8"]["threads"][str(th)]["median_ms"]
                             for th in args.threads}
    ref_f = models["reference"]["tflite"]["float32"]["threads"]
    madds_ratio = []
    for key, label in (("detection", "shipped file (network + post-process)"),
                       ("detection_network", "network alone")):
        if key in models:
            ours = models[key]["tflite"]["float32"]["threads"]
            ratio = {str(th): ours[str(th)]["gmadds_per_sec"] / ref_f[str(th)]["gmadds_per_sec"]
                     for th in args.threads}
            madds_ratio.append({"model": key, "label": label, "ratio": ratio,
                                "met": {t: v >= TARGET_MADDS_RATIO for t, v in ratio.items()}})
    int8_speedup = [{"model": key, "label": m["short"], "speedup": m["int8_speedup"],
                     "met": {t: v >= TARGET_INT8_SPEEDUP for t, v in m["int8_speedup"].items()}}
                    for key, m in models.items()]

    if "detection" in models:
        for th in args.threads:
            shipped = models["detection"]["tflite"]["float32"]["threads"][str(th)]["median_ms"]
            net = models["detection_network"]["tflite"]["float32"]["threads"][str(th)]["median_ms"]
            notes.append(f"detection float32, {th} thread(s): the post-process (softmax + "
                         f"TFLite_Detection_PostProcess) costs about {shipped - net:.1f} of the "
                         f"file's {shipped:.1f} ms (shipped minus network-only latency)")
    whole = [f"{m['short']} {q}" for m in models.values() for q in QUANTIZATIONS
             if m["tflite"][q]["xnnpack"].get("partitions")
             and not m["tflite"][q]["xnnpack"]["not_delegated"]]
    if whole:
        notes.append(f"XNNPACK runs every op of: {', '.join(whole)}")
    for key, m in models.items():
        for q in QUANTIZATIONS:
            x = m["tflite"][q]["xnnpack"]
            if "error" in x:
                notes.append(f"XNNPACK coverage unknown ({x['error']})")
            elif x["partitions"] == 0:
                notes.append(f"{m['short']} {q}: XNNPACK took NO op (the file runs on LiteRT's "
                             f"builtin kernels)")
            elif x["not_delegated"]:
                left = ", ".join(f"{n} x{c}" for n, c in sorted(x["not_delegated"].items()))
                notes.append(f"{m['short']} {q}: XNNPACK runs {x['delegated']} of {x['ops']} ops "
                             f"in {x['partitions']} partition(s); left to LiteRT's kernels: {left}")
    noisy = [(f"{m['short']} {q} {th} thr", v["repeat_spread"]) for m in models.values()
             for q in QUANTIZATIONS for th, v in m["tflite"][q]["threads"].items()]
    worst = max(noisy, key=lambda n: n[1])
    if len(args.threads) > 1:
        lo, hi = min(args.threads), max(args.threads)
        slower = [f"{m['short']} {q}" for m in models.values() for q in QUANTIZATIONS
                  if m["tflite"][q]["threads"][str(hi)]["median_ms"]
                  >= m["tflite"][q]["threads"][str(lo)]["median_ms"]]
        if slower:
            notes.append(f"{hi} threads no faster than {lo} for {len(slower)} of "
                         f"{len(models) * len(QUANTIZATIONS)} files ({', '.join(slower)}): are the "
                         f"other cores busy? (other processes used {busy(busy_start)} of the "
                         f"{os.cpu_count()} cores before the run, {busy(busy_end)} after)")
    if args.repeats > 1:
        notes.append(f"noise: the repeats' medians differ by up to {100 * worst[1]:.0f}% of the "
                     f"median ({worst[0]})")
    if models.get("segmentation", {}).get("atrous_padding_madds"):
        seg = models["segmentation"]
        notes.append(f"segmentation: TFLite runs the dilated convs natively, so its MAdds leave out "
                     f"the {seg['atrous_padding_madds'] / 1e9:.3f}G that TensorFlow's "
                     f"space-to-batch padding adds to the Keras figure (profile_model)")

    import ai_edge_litert

    return {
        "benchmark": "latency",
        "time": utc_timestamp(),
        "setup": {
            "tasks": args.tasks, "configs": {t: TASK_CONFIGS[t] for t in args.tasks},
            "overrides": WEIGHTS_FREE, "weights": "random (no weight files)",
            "reference": f"keras.applications.MobileNetV2(weights=None, input_shape=({REFERENCE_SIZE}, "
                         f"{REFERENCE_SIZE}, 3)), alpha 1.0, 1000 classes",
            "quick": args.quick, "threads": args.threads, "keras_threads": args.keras_threads,
            "runs": args.runs, "warmup": args.warmup, "warmup_later_repeats": 1,
            "repeats": args.repeats, "keras_runs": args.keras_runs,
            "calibration_images": args.calibration_images,
            "candidate_fraction": args.candidate_fraction,
            "calibration": "uniform random pixels 0..255 (no dataset; latency does not depend on it)",
            "int8": "full-integer, uint8 input, float32 outputs", "nms": args.nms,
            "keras_call": "tf.function(model(x, training=False)), outputs to numpy",
            "device": device_description(cpu_flags=True), "cores": os.cpu_count(),
            "cpu_busy_start": busy_start, "cpu_busy_end": busy_end,
            "litert": ai_edge_litert.__version__, **versions(), "numpy": np.__version__,
        },
        "models": models,
        "targets": {"madds_ratio_target": TARGET_MADDS_RATIO, "madds_ratio": madds_ratio,
                    "int8_speedup_target": TARGET_INT8_SPEEDUP, "int8_speedup": int8_speedup},
        "notes": notes,
    }


def main(argv=None) -> int:
    return run_benchmark("latency.py", parse_args(argv), run, format_table)


if __name__ == "__main__":
    sys.exit(main())
