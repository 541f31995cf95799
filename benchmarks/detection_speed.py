#!/usr/bin/env python
"""Detection speed: SSDLite training images/s against a PyTorch peer, the input pipeline, and
Keras inference latency.

    python benchmarks/detection_speed.py                  # coco_ssdlite.yaml: alpha 1.0, 320 px, batch 8
    python benchmarks/detection_speed.py --quick          # smoke test, under a minute on 2 cores
    python benchmarks/detection_speed.py --compare-bf16   # float32 and mixed_bfloat16 train steps
    python benchmarks/detection_speed.py model.head.loss=focal

A benchmark, not a test. Our figures are measured in this process; the PyTorch figure is not:

1. Train step. Our detector (task.build_model + task.compile: the config's optimizer, schedule,
   SSD loss with hard negative mining, weight decay; jit_compile=False as the trainer leaves it
   on CPU) runs `model.fit` on an in-memory dataset that cycles over a few fixed batches of
   random pixels with valid targets (a few random boxes per image encoded against the anchors by
   `matcher.encode_targets`, so the loss has positives). Only the train step is timed, by a
   callback, after warmup steps. With --compare-bf16 a float32 and a mixed_bfloat16 model run
   alternately and the medians are compared.
   The verdict compares the images/s with PEER_IMAGES_PER_SEC, a PyTorch SSDLite320 train step
   at batch 8 with 2 threads on this machine, measured elsewhere (issue 3) and written here as a
   constant: target >= 2x. It is only comparable at batch 8, 320 px, alpha 1.0.
2. What limits it. The forward pass alone (inference mode, same batch) and the loss alone (on
   fixed outputs) are timed, so train step = forward + loss + the rest (backward, optimizer
   update, BatchNorm statistics). MAdds from `profile_model` turn times into achieved GMAC/s.
3. Input pipeline. N synthetic-shapes COCO images (JPEG) are written to a temp dir and our real
   training dataset (task.build_dataset("train", training=True): decode, the config's SSD
   augmentation, resize, target encoding, batch) is iterated with no model: its images/s over
   the train step's is the headroom (> 1: input keeps up). Then the model fits on that pipeline
   once (end to end); end to end / train step near 1 means no starvation.
4. Inference. Batch 1 latency in ms (median and p90 over --latency-runs calls after warmup) of
   the raw model call (model(x, training=False) in a tf.function), model.predict_on_batch, and
   predict_on_batch + task.postprocess (decode + per-class NMS), plus postprocess alone; then
   images/s at the train batch size, raw and with postprocess.

Writes the figures as JSON (--json-out, default benchmarks/results/detection_speed.json,
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
    alternating_fit, apply_defaults, check_counts, check_sizes, config_name, device_description,
    fmt_runs, make_log, pipeline_runs, run_benchmark, table_lines, table_width, time_fit,
    utc_timestamp, versions)

# The peer: a PyTorch SSDLite320 train step at batch 8, 320x320, 2 threads, on this 2-core
# machine. MEASURED ELSEWHERE (figure documented in issue 3), NOT IN THIS PROCESS; only
# comparable when this script runs at batch 8, 320 px, alpha 1.0 on the same machine, idle.
PEER_IMAGES_PER_SEC = 14.5
PEER_SETUP = {"batch_size": 8, "size": 320, "alpha": 1.0}
PEER_DESCRIPTION = ("PyTorch SSDLite320 train step, batch 8, 320 px, 2 threads, this machine "
                    "(documented in issue 3, not measured here)")
TARGET_RATIO = 2.0  # ours / peer

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "detection_speed.json"
FULL = {"batch_size": 8, "size": 320, "steps": 15, "warmup": 3, "repeats": 3,
        "pipeline_images": 48, "latency_runs": 30}
QUICK = {"batch_size": 4, "size": 160, "steps": 3, "warmup": 1, "repeats": 1,
         "pipeline_images": 16, "latency_runs": 5}
QUICK_OVERRIDES = ["model.backbone.alpha=0.35"]
SHAPES_CLASSES = 5  # the synthetic shapes dataset's classes


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Images/s of our SSDLite train step (vs a documented PyTorch figure), of the "
                    "input pipeline alone, and Keras inference latency.",
        epilog="Trailing key=value arguments override the config (e.g. model.backbone.alpha=0.5). "
               "--size and --batch-size win over model.input_size and train.batch_size.")
    p.add_argument("--config", default="coco_ssdlite.yaml",
                   help="config path or bundled name (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="train batch; default 8 (--quick: 4)")
    p.add_argument("--size", type=int, default=None,
                   help="square input resolution, a multiple of 32; default 320 (--quick: 160)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run; default 15 (--quick: 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before a model's first run (later runs: 1); default 3 (--quick: 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="train-step runs per precision (alternating with --compare-bf16) and "
                        "pipeline runs; medians are reported; default 3 (--quick: 1)")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                   help="Keras dtype policy of the measured model (default: %(default)s)")
    p.add_argument("--compare-bf16", action="store_true",
                   help="time the train step under float32 and mixed_bfloat16 alternately and "
                        "report the speed-up (inference uses --precision)")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra- and inter-op threads (default: TF's choice, all cores; "
                        "the peer used 2)")
    p.add_argument("--pipeline-images", type=int, default=None,
                   help="shapes COCO images generated for the pipeline; default 48 (--quick: 16)")
    p.add_argument("--file-size", default=None, metavar="H[xW]",
                   help="size of the generated JPEG files; default --size (COCO's are about "
                        "480x640, which costs more to decode and crop)")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="timed calls per inference figure; default 30 (--quick: 5)")
    p.add_argument("--json-out", default=str(DEFAULT_JSON),
                   help="where to write the figures ('-' for stdout; default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: alpha 0.35, 160 px, batch 4, 3 steps after 1 warmup, 1 repeat (about 1 min)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    apply_defaults(args, QUICK if args.quick else FULL)
    check_counts(p, args, ("batch_size", "steps", "repeats", "pipeline_images", "latency_runs"))
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    check_sizes(p, args, min_file_side=32)
    args.precisions = (["float32", "mixed_bfloat16"] if args.compare_bf16 else [args.precision])
    if args.compare_bf16 and args.precision != "float32":
        args.precisions.reverse()  # the --precision model first: it is the one inference uses
    return args


# Measurement ------------------------------------------------------------------------------------

def time_calls(fn, runs: int, warmup: int) -> dict:
    """Wall time of `fn()` (which must return only once its work is done): {"median_ms",
    "p90_ms", "runs_ms"} over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    ordered = sorted(times)
    return {"median_ms": statistics.median(times),
            "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
            "runs_ms": times}


def random_targets(rng, anchors, num_classes: int, max_boxes: int = 4):
    """Targets for one image from 1..max_boxes random valid boxes (side 10-60% of the image,
    aspect 1/2..2, inside the image, labels 1..K), encoded as the pipeline does. Returns
    (box_targets (A, 4) float32, class_targets (A,) int32)."""
    import numpy as np

    from mobilevision.ops.matcher import encode_targets

    g = int(rng.integers(1, max_boxes + 1))
    side = rng.uniform(0.1, 0.6, g)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), g))
    h, w = np.minimum(side * np.sqrt(aspect), 0.95), np.minimum(side / np.sqrt(aspect), 0.95)
    y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
    boxes = np.stack([y0, x0, y0 + h, x0 + w], axis=1).astype(np.float32)
    labels = rng.integers(1, num_classes + 1, g).astype(np.int32)
    return encode_targets(anchors, boxes, labels)


def random_batches(anchors, batch_size: int, size: int, num_classes: int, seed: int, distinct: int = 4):
    """An endless tf.data dataset cycling over `distinct` fixed batches of random pixels
    (float32 0..255, as our pipeline yields) with valid SSD targets; prefetched.
    Returns (dataset, one batch (x, y) for the forward / loss timings, mean positive anchors per
    image)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = distinct * batch_size
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8).astype(np.float32)
    box_t, cls_t = zip(*(random_targets(rng, anchors, num_classes) for _ in range(n)))
    box_t, cls_t = np.stack(box_t), np.stack(cls_t)
    positives = float((cls_t > 0).sum(axis=1).mean())
    ds = tf.data.Dataset.from_tensor_slices((x, {"boxes": box_t, "classes": cls_t}))
    ds = ds.batch(batch_size, drop_remainder=True).cache().repeat().prefetch(tf.data.AUTOTUNE)
    first = (x[:batch_size], {"boxes": box_t[:batch_size], "classes": cls_t[:batch_size]})
    return ds, first, positives


def with_static_shapes(ds, batch_size: int, size: int, num_anchors: int):
    """Give the pipeline's batches the static shapes of the random batches, so fit reuses the
    traced train step instead of tracing a second one."""
    import tensorflow as tf

    def fix(x, y):
        return (tf.ensure_shape(x, (batch_size, size, size, 3)),
                {"boxes": tf.ensure_shape(y["boxes"], (batch_size, num_anchors, 4)),
                 "classes": tf.ensure_shape(y["classes"], (batch_size, num_anchors))})

    return ds.map(fix)


# Report -----------------------------------------------------------------------------------------

def format_table(r: dict) -> str:
    s, t, b, p, e, inf = (r["setup"], r["train_step"], r["breakdown"], r["pipeline"],
                          r["end_to_end"], r["inference"])
    primary = t[s["precisions"][0]]
    rows = []  # (label, value, value format, what follows); value None: a heading
    for prec in s["precisions"]:
        v = t[prec]
        rows.append((f"train step, {prec}", v["images_per_sec"], ".1f", fmt_runs(v["runs"])))
    if "bf16_speedup" in t:
        rows.append(("  speed-up mixed_bfloat16 / float32", t["bf16_speedup"], ".2f",
                     "> 1: bfloat16 helps on this CPU"))
    peer = r["peer"]
    rows.append(("  PyTorch SSDLite320 peer (not measured here)", peer["images_per_sec"], ".1f",
                 "batch 8, 320 px, 2 threads; documented in issue 3"))
    verdict = (f"target >= {peer['target']:.1f}x: {'OK' if peer['meets_target'] else 'BELOW TARGET'}"
               if peer["comparable"] else "NOT COMPARABLE: the peer is batch 8, 320 px, alpha 1.0")
    rows.append((f"  ratio ours ({s['precisions'][0]}) / peer", peer["ratio"], ".2f", verdict))
    rows.append((f"input pipeline alone ({p['files']} JPEG, {'x'.join(map(str, p['image_size']))})",
                 p["images_per_sec"], ".1f", fmt_runs(p["runs"])))
    rows.append(("  headroom pipeline / train step", p["headroom"], ".2f",
                 "> 1: the pipeline keeps up" if p["headroom"] > 1 else "< 1: THE PIPELINE IS THE BOTTLENECK"))
    rows.append(("end to end, on the pipeline", e["images_per_sec"], ".1f", fmt_runs(e["runs"])))
    e2e_ratio, shared = e["ratio_to_train_step"], e["explained_by_sharing_cores"]
    rows.append(("  end to end / train step", e2e_ratio, ".3f",
                 "about 1: no starvation" if e2e_ratio >= 0.9
                 else f"the pipeline's share of the cores ({shared:.2f} expected)" if e2e_ratio >= shared - 0.1
                 else "< 0.9: TRAINING WAITS FOR INPUT (or a busy machine)"))
    rows.append((f"inference, batch {s['batch_size']}: model call", inf["batch"]["raw"]["images_per_sec"],
                 ".1f", f"{inf['batch']['raw']['median_ms']:.1f} ms per batch"))
    rows.append((f"inference, batch {s['batch_size']}: + postprocess",
                 inf["batch"]["with_postprocess"]["images_per_sec"], ".1f",
                 f"{inf['batch']['with_postprocess']['median_ms']:.1f} ms per batch"))
    width = table_width(rows)
    lines = [
        f"detection_speed: {s['config']}  alpha {s['alpha']}  {s['size']}x{s['size']}  batch "
        f"{s['batch_size']}  {s['num_classes']} classes  {s['num_anchors']} anchors  "
        f"{s['params'] / 1e6:.2f}M params  {s['madds'] / 1e9:.3f}G MAdds",
        f"  {s['device']}; {s['threads']}; TF {s['tensorflow']}, Keras {s['keras']}",
        f"  train step: {s['steps']} timed steps per run after {s['warmup']} warmup "
        f"({s['warmup_later_runs']} in later runs), {s['repeats']} run(s) per precision, median; "
        f"{s['positives_per_image']:.1f} positive anchors per image",
        "",
        *table_lines(rows, width),
    ]

    one = inf["batch1"]
    lines += ["", f"  inference latency, batch 1 ({s['precisions'][0]}){'':{max(0, width - 34 - len(s['precisions'][0]))}s}"
                  f"{'median ms':>10s} {'p90 ms':>8s}"]
    for key, label in (("raw", "model call (tf.function)"), ("predict_on_batch", "model.predict_on_batch"),
                       ("with_postprocess", "predict_on_batch + postprocess"),
                       ("postprocess", "postprocess alone (decode + NMS)")):
        lines.append(f"    {label:{width - 2}s}{one[key]['median_ms']:9.1f}  {one[key]['p90_ms']:8.1f}")

    lines += ["", f"  what limits it (batch {s['batch_size']}, {s['precisions'][0]}, ms per image):"]
    step = b["train_step_ms_per_image"]
    for label, ms in (("forward, inference mode", b["forward_ms_per_image"]),
                      ("loss (smooth L1 + CE, hard negative mining)", b["loss_ms_per_image"]),
                      ("the rest: backward, optimizer, BN statistics", b["rest_ms_per_image"])):
        lines.append(f"    {label:{width - 2}s}{ms:9.1f}   {100 * ms / step:4.0f}% of the step")
    lines.append(f"    {'train step':{width - 2}s}{step:9.1f}   = {b['train_over_forward']:.1f}x the forward")
    lines.append(f"    achieved: forward {b['forward_gmacs']:.1f} GMAC/s, train step ~{b['train_gmacs']:.1f} "
                 f"GMAC/s (counted as 3x the forward MAdds); float32 matmul {b['matmul_gmacs']:.0f} GMAC/s")
    for line in b["verdict"]:
        lines.append(f"    {line}")
    if s["quick"]:
        lines.append("  (--quick is a smoke test: too few steps, and not the peer's setup, for the "
                     "ratios to mean anything)")
    return "\n".join(lines)


def threads_description() -> str:
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    name = lambda n: str(n) if n else "auto"  # noqa: E731
    return f"TF threads intra {name(intra)} / inter {name(inter)}"


def matmul_gmacs(n: int = 1024, runs: int = 5) -> float:
    """This CPU's float32 matrix-multiply rate in GMAC/s (n x n @ n x n, median of `runs`): a
    practical ceiling to judge the model's achieved GMAC/s against."""
    import tensorflow as tf

    a = tf.random.stateless_uniform((n, n), (1, 2))
    mm = tf.function(lambda a: tf.matmul(a, a))
    t = time_calls(lambda: mm(a).numpy(), runs, 2)
    return n ** 3 / (t["median_ms"] / 1000) / 1e9


def limits_verdict(headroom: float, e2e_ratio: float, rest_share: float, loss_share: float,
                   train_over_forward: float, forward_gmacs: float, peak_gmacs: float,
                   depthwise_share: float) -> list[str]:
    """A few lines naming what bounds the train step, from the measured figures."""
    lines = []
    # With the pipeline and the step sharing the same cores, each image costs the step's time
    # plus the pipeline's: this is the end-to-end ratio that sharing alone explains.
    shared = 1 / (1 + 1 / headroom)
    if headroom < 1:
        lines.append(f"input: THE LIMIT: the pipeline alone gives only {headroom:.2f}x the train "
                     f"step's images/s (end to end {e2e_ratio:.2f}x)")
    elif e2e_ratio >= 0.9:
        lines.append(f"input: not the limit (pipeline alone {headroom:.1f}x the train step, end to "
                     f"end {e2e_ratio:.2f}x)")
    elif e2e_ratio >= shared - 0.1:
        lines.append(f"input: the pipeline alone is {headroom:.1f}x faster, but it shares the cores: "
                     f"end to end {e2e_ratio:.2f}x the train step (sharing alone explains {shared:.2f}x)")
    else:
        lines.append(f"input: the pipeline alone is {headroom:.1f}x faster (sharing the cores "
                     f"explains {shared:.2f}x) yet end to end is {e2e_ratio:.2f}x: a busy machine, "
                     f"too few steps, or a pipeline stall; rerun idle with more --steps")
    lines.append(f"step: {train_over_forward:.1f}x a forward pass; backward + update take "
                 f"{100 * rest_share:.0f}% of it, the loss {100 * loss_share:.0f}%")
    share = forward_gmacs / peak_gmacs
    line = (f"arithmetic: the forward reaches {forward_gmacs:.1f} GMAC/s, {100 * share:.0f}% of a "
            f"float32 matmul on this CPU ({peak_gmacs:.0f} GMAC/s); depthwise convs are "
            f"{100 * depthwise_share:.0f}% of the MAdds")
    lines.append(line)
    if share < 0.3:
        lines.append("  so arithmetic is not the bound; most likely memory traffic (depthwise convs, "
                     "BatchNorm, ReLU6 on large maps) and per-op overhead are")
    return lines


# Main -------------------------------------------------------------------------------------------

def run(args) -> dict:
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    import mobilevision as mv
    from mobilevision.data import shapes
    from mobilevision.profile import profile_model
    from mobilevision.tasks import get_task
    from mobilevision.tasks.trainer import set_precision
    from mobilevision.utils import set_seed

    b, s = args.batch_size, args.size
    base = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides,
            f"model.input_size=[{s}, {s}]", f"train.batch_size={b}"]
    cfgs = {p: mv.load_config(args.config, [*base, f"train.precision={p}"]) for p in args.precisions}
    primary = args.precisions[0]
    cfg = cfgs[primary]
    set_seed(cfg.seed)
    alpha, k = cfg.model.backbone.alpha, cfg.model.num_classes
    log = make_log(args.json_out)

    # 1. Train step on random in-memory batches with valid targets.
    log(f"building the detector ({', '.join(args.precisions)}) ...")
    task = get_task(cfg)
    anchors = task.anchors()
    steps_per_epoch = 1000  # only shapes the learning-rate schedule; any value times the same
    models = {}
    for prec in args.precisions:
        set_precision(cfgs[prec])  # the policy applies to layers created from here on
        model = get_task(cfgs[prec]).build_model()
        task.compile(model, steps_per_epoch)
        model.jit_compile = False  # as fit resolves "auto" on CPU; stated, not left implicit
        models[prec] = model
    set_precision(cfg)
    model = models[primary]
    stats = profile_model(model)
    memory_ds, (x_b, y_b), positives = random_batches(anchors, b, s, k, cfg.seed)

    # Precisions alternate; each model's first run traces its train step during warmup.
    runs, med = alternating_fit(models, memory_ds, b, args.steps, args.warmup, args.repeats, log)
    for prec in args.precisions[1:]:
        del models[prec]

    # 2. Forward alone and loss alone, same batch, for the breakdown; inference.
    log("forward, loss and inference timings ...")
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    x1 = tf.constant(x_b[:1])
    xb = tf.constant(x_b)
    latency_warmup = 2 if args.quick else 3
    peak = matmul_gmacs()
    raw_b = time_calls(lambda: forward(xb), args.latency_runs, latency_warmup)
    outputs_b = {key: tf.constant(v) for key, v in model.predict_on_batch(xb).items()}
    y_const = {key: tf.constant(v) for key, v in y_b.items()}
    loss_fn = tf.function(lambda y, p: model.ssd_loss(y, p))
    loss_b = time_calls(lambda: loss_fn(y_const, outputs_b), args.latency_runs, latency_warmup)
    post_b = time_calls(lambda: task.postprocess(model.predict_on_batch(xb)), args.latency_runs,
                        latency_warmup)
    batch1 = {
        "raw": time_calls(lambda: forward(x1), args.latency_runs, latency_warmup),
        "predict_on_batch": time_calls(lambda: model.predict_on_batch(x1), args.latency_runs,
                                       latency_warmup),
        "with_postprocess": time_calls(lambda: task.postprocess(model.predict_on_batch(x1)),
                                       args.latency_runs, latency_warmup),
    }
    outputs_1 = model.predict_on_batch(x1)
    batch1["postprocess"] = time_calls(lambda: task.postprocess(outputs_1), args.latency_runs,
                                       latency_warmup)

    # 3. The real input pipeline over shapes COCO images, alone and feeding the model.
    with tempfile.TemporaryDirectory(prefix="mv_detection_speed_") as tmp:
        root = Path(tmp) / "shapes"
        fh, fw = args.file_size
        log(f"writing {args.pipeline_images} {fh}x{fw} shapes COCO images ...")
        summary = shapes.generate_detection(root, num_train=args.pipeline_images, num_val=0,
                                            image_size=(fh, fw), seed=cfg.seed)
        files = sorted((root / "train" / "images").glob("*"))
        # The reader checks num_classes against the JSON; the model keeps its K classes, and
        # the shapes labels 1..5 are valid targets for it, so it can fit on this pipeline.
        pcfg = mv.load_config(args.config, [
            *base, f"train.precision={primary}", "data.synthetic=null", f"data.root={root}",
            "data.train_split=train", 'data.coco.images="{split}/images"',
            'data.coco.annotations="annotations/instances_{split}.json"',
            f"model.num_classes={len(summary['classes'])}"])
        pipeline_ds, n = get_task(pcfg).build_dataset("train", training=True)
        pipeline_ds = pipeline_ds.repeat()
        batches = max(args.steps, math.ceil(2 * n / b))  # at least two passes over the files
        pipe_runs, pipe_batches = pipeline_runs(pipeline_ds, batches, max(args.warmup, 1),
                                                args.repeats, log,
                                                min_seconds=0.5 if args.quick else 2.0)
        log("end to end, the detector on the pipeline ...")
        e2e = time_fit(model, with_static_shapes(pipeline_ds, b, s, len(anchors)), b, args.steps,
                       max(args.warmup, 1))
        pipe_bytes = sum(f.stat().st_size for f in files)
    pipe = statistics.median(pipe_runs)
    log("done")

    # Breakdown, per image at the train batch size.
    train_ms = 1000 / med[primary]
    fwd_ms = raw_b["median_ms"] / b
    loss_ms = loss_b["median_ms"] / b
    rest_ms = train_ms - fwd_ms - loss_ms
    madds = int(stats["madds"])
    dw_share = stats["madds_by_type"]["depthwise"] / max(madds, 1)
    headroom, e2e_ratio = pipe / med[primary], e2e / med[primary]
    comparable = (b == PEER_SETUP["batch_size"] and s == PEER_SETUP["size"]
                  and float(alpha) == PEER_SETUP["alpha"])
    peer_ratio = med[primary] / PEER_IMAGES_PER_SEC

    train_step = {prec: {"images_per_sec": med[prec], "runs": runs[prec]} for prec in args.precisions}
    if args.compare_bf16:
        train_step["bf16_speedup"] = med["mixed_bfloat16"] / med["float32"]

    def per_batch(timing):
        return {"median_ms": timing["median_ms"], "p90_ms": timing["p90_ms"],
                "images_per_sec": 1000 * b / timing["median_ms"], "runs_ms": timing["runs_ms"]}

    return {
        "benchmark": "detection_speed",
        "time": utc_timestamp(),
        "setup": {
            "config": config_name(cfg, args.config),
            "overrides": base, "quick": args.quick, "alpha": alpha, "size": s, "batch_size": b,
            "num_classes": k, "num_anchors": int(len(anchors)), "precisions": args.precisions,
            "params": int(model.count_params()), "madds": madds,
            "madds_by_type": {key: int(v) for key, v in stats["madds_by_type"].items()},
            "optimizer": cfg.train.optimizer.name, "loss": cfg.model.head.loss,
            "neg_pos_ratio": cfg.model.head.neg_pos_ratio, "weight_decay": cfg.train.weight_decay,
            "jit_compile": False, "positives_per_image": positives,
            "steps": args.steps, "warmup": args.warmup, "warmup_later_runs": min(args.warmup, 1),
            "repeats": args.repeats, "latency_runs": args.latency_runs,
            "latency_warmup": latency_warmup,
            "device": device_description(cpu_flags=True), "threads": threads_description(),
            **versions(), "numpy": np.__version__,
        },
        "train_step": train_step,
        "peer": {"description": PEER_DESCRIPTION, "images_per_sec": PEER_IMAGES_PER_SEC,
                 "measured_here": False, "setup": PEER_SETUP, "comparable": comparable,
                 "ratio": peer_ratio, "target": TARGET_RATIO,
                 "meets_target": comparable and peer_ratio >= TARGET_RATIO},
        "breakdown": {
            "train_step_ms_per_image": train_ms, "forward_ms_per_image": fwd_ms,
            "loss_ms_per_image": loss_ms, "rest_ms_per_image": rest_ms,
            "train_over_forward": train_ms / fwd_ms,
            "forward_gmacs": madds * 1000 / fwd_ms / 1e9,
            "train_gmacs": 3 * madds * med[primary] / 1e9,
            "depthwise_madds_share": dw_share,
            "matmul_gmacs": peak,
            "verdict": limits_verdict(headroom, e2e_ratio, rest_ms / train_ms, loss_ms / train_ms,
                                      train_ms / fwd_ms, madds * 1000 / fwd_ms / 1e9, peak, dw_share),
        },
        "pipeline": {
            "files": len(files), "bytes": pipe_bytes, "image_size": [fh, fw],
            "objects": summary["splits"]["train"]["objects"],
            "augment": {key: pcfg.data.augment[key] for key in ("ssd_crop", "flip", "photometric", "zoom_out")},
            "batches_timed": pipe_batches, "images_per_sec": pipe, "runs": pipe_runs,
            "headroom": headroom,
        },
        "end_to_end": {"images_per_sec": e2e, "runs": [e2e], "ratio_to_train_step": e2e_ratio,
                       # the ratio if the pipeline's CPU time simply adds to the step's
                       "explained_by_sharing_cores": 1 / (1 + 1 / headroom)},
        "inference": {
            "precision": primary,
            "batch1": batch1,
            "batch": {"batch_size": b, "raw": per_batch(raw_b), "with_postprocess": per_batch(post_b)},
            "loss_ms_per_batch": loss_b["median_ms"],
        },
    }


def main(argv=None) -> int:
    return run_benchmark("detection_speed.py", parse_args(argv), run, format_table)


if __name__ == "__main__":
    sys.exit(main())
