#!/usr/bin/env python
"""Detection speed: SSDLite training images/s against two PyTorch peers measured in the same
run, the input pipeline, and Keras inference latency.

    python benchmarks/detection_speed.py                  # coco_ssdlite.yaml: alpha 1.0, 320 px, batch 8
    python benchmarks/detection_speed.py --peer-python peer/bin/python   # and the PyTorch peers
    python benchmarks/detection_speed.py --quick          # smoke test, about a minute on 2 cores
    python benchmarks/detection_speed.py --compare-bf16   # float32 and mixed_bfloat16 train steps
    python benchmarks/detection_speed.py model.head.loss=focal

A benchmark, not a test. Every figure is measured in this run:

1. Train step. Our detector (`tasks.build_model` + the detection task's `compile`: the
   config's optimizer, schedule, SSD loss with hard negative mining, weight decay;
   jit_compile=False as the trainer leaves it on CPU) runs `model.fit` on an in-memory dataset
   that cycles over a few fixed batches of random pixels with valid targets (a few random boxes
   per image encoded against the model's anchors by `matcher.encode_targets`, so the loss has
   positives). Only the train step is timed, by a callback, after warmup steps. With
   --compare-bf16 a float32 and a mixed_bfloat16 model run alternately and the medians are
   compared.
   The PyTorch peers (torch_peer.py, run under --peer-python or $MOBILEVISION_PEER_PYTHON in a
   subprocess, so torch is never imported here nor a dependency of the toolkit) train at the
   same batch and size, on as many threads as ours, alternating with ours: ours, peer a,
   peer b, ours, ... (--repeats rounds, the same --steps and --warmup; medians):
   a. torchvision's ssdlite320_mobilenet_v3_large (weights=None, weights_backbone=None), our
      class count (K + 1 logits, not torchvision's default 91), SGD momentum 0.9 as torchvision's
      reference recipe, 1-4 random boxes per image matched to its anchors inside its step.
   b. Our network built from torchvision parts: mobilenet_v2 features (our alpha) tapped at
      block 13's expansion (576 channels, stride 16) and the final 1280-channel conv, the SSDLite
      extras and torchvision's SSDLiteHead with our anchors per location (the same anchor count,
      trainable parameters and MAdds as ours), our loss written in torch on our encoded targets,
      our config's optimizer.
   Each gets images/s and MAdds/s (forward MAdds per image x images/s; ours from profile_model,
   the peers' from torch's FlopCounterMode, FLOPs / 2), and ours / peer is judged against the
   targets >= 1.0x peer a and >= 1.2x peer b (issue 13) at batch 8, 320 px, alpha 1.0. Without a
   peer Python the ratios are reported as NOT MEASURED. Peer b needs our default network
   (mobilenet_v2, output stride 32, the default taps); other configs leave it NOT MEASURED.
   The share of the cores that other processes kept busy during these timings is reported; above
   BUSY the ratios are flagged (PyTorch's spinning OpenMP threads lose more than TensorFlow's pool
   on an oversubscribed machine, so a busy machine's ratios flatter ours).
2. What limits it. The forward pass alone (inference mode, same batch) and the loss alone (on
   fixed outputs) are timed, so train step = forward + loss + the rest (backward, optimizer
   update, BatchNorm statistics). MAdds from `profile_model` turn times into achieved GMAC/s.
3. Input pipeline. N synthetic-shapes COCO images (JPEG) are written to a temp dir and our real
   training dataset (`tasks.training_dataset` for the measured model: decode, the config's SSD
   augmentation, resize, target encoding against the model's anchors, batch) is iterated with no
   model: its images/s over the train step's is the headroom (> 1: input keeps up). Then the model fits on that pipeline
   once (end to end); end to end / train step near 1 means no starvation.
4. Inference. Batch 1 latency in ms (median and p90 over --latency-runs calls after warmup) of
   the raw model call (model(x, training=False) in a tf.function), the model with its decoder
   (`model.decode(model(x))`, box decoding + per-class NMS, in a tf.function: what every
   exported file computes), model.predict_on_batch (which returns those decoded outputs through
   Keras' predict path), plus the decoder alone; then images/s at the train batch size, raw and
   with the decoder.

Writes the figures as JSON (--json-out, default benchmarks/results/detection_speed.json,
atomically) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BenchmarkError, alternating_fit, apply_defaults, check_counts, check_sizes,
    config_name, in_isa_mode, machine, parse_isa, run_per_isa,
    cpu_sample, device_description, fmt_runs, make_log, others_share, pipeline_runs,
    run_benchmark, table_lines, table_width, time_calls, time_fit, utc_timestamp, versions)
from step_profile import format_layer_profile, layer_profile, plain_keras_ssdlite  # noqa: E402

# The PyTorch peers, measured in this run by torch_peer.py under --peer-python (a subprocess:
# torch is never imported here). Targets are ours / peer images/s (issue 13), judged only at the
# setup they were set for.
PEER_SCRIPT = Path(__file__).resolve().parent / "torch_peer.py"
PEER_PYTHON_ENV = "MOBILEVISION_PEER_PYTHON"
PEERS = {"a": "torchvision ssdlite320_mobilenet_v3_large",
         "b": "our network from torchvision parts"}
PEER_TARGETS = {"a": 1.0, "b": 1.2}
TARGET_SETUP = {"batch_size": 8, "size": 320, "alpha": 1.0}
# What peer b rebuilds: our default detector network (mobilevision.backbones.mobilenet_v2
# HEAD_TAPS["detection"] at output stride 32).
PEER_B_TAPS = ("block_13_expand_relu", "out_relu")
DISTINCT_BATCHES = 4  # fixed random batches cycled over, ours and the peers'
BUSY = 0.1  # other processes' share of the cores above which the train-step figures are noisy

PLAIN = "plain keras"  # the --plain-keras model's name among the timed models

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "detection_speed.json"
FULL = {"batch_size": 8, "size": 320, "steps": 15, "warmup": 3, "repeats": 3,
        "pipeline_images": 48, "latency_runs": 30}
QUICK = {"batch_size": 4, "size": 160, "steps": 3, "warmup": 1, "repeats": 1,
         "pipeline_images": 16, "latency_runs": 5}
QUICK_OVERRIDES = ["model.backbone.alpha=0.35"]
SHAPES_CLASSES = 5  # the synthetic shapes dataset's classes


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Images/s of our SSDLite train step and of two PyTorch peers in the same run "
                    "(with --peer-python), of the input pipeline alone, and Keras inference latency.",
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
    p.add_argument("--plain-keras", action="store_true",
                   help="also time, alternating with ours, the same network as a Keras user would "
                        "build it without the toolkit (keras.applications MobileNetV2, Keras' own "
                        "BatchNormalization, a plain Huber + cross-entropy compile; step_profile.py)")
    p.add_argument("--layers", action="store_true",
                   help="split our train step by layer type: each layer's forward and backward "
                        "timed alone, and what the step spends beyond the layers (step_profile.py)")
    p.add_argument("--compare-bf16", action="store_true",
                   help="time the train step under float32 and mixed_bfloat16 alternately and "
                        "report the speed-up (inference uses --precision)")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra- and inter-op threads, and the PyTorch peers' (default: "
                        "TF's choice, all cores; the peers get the cores this process may use)")
    p.add_argument("--peer-python", default=os.environ.get(PEER_PYTHON_ENV) or None,
                   metavar="PATH",
                   help="a Python with torch and torchvision (its own venv) that runs the PyTorch "
                        "peers in a subprocess, alternating with ours (default: "
                        f"${PEER_PYTHON_ENV}); without one the ratios are NOT MEASURED")
    p.add_argument("--peers", default="a,b",
                   help="the peers to measure: a (torchvision ssdlite320_mobilenet_v3_large), "
                        "b (our network built from torchvision parts) (default: %(default)s)")
    p.add_argument("--pipeline-images", type=int, default=None,
                   help="shapes COCO images generated for the pipeline; default 48 (--quick: 16)")
    p.add_argument("--file-size", default=None, metavar="H[xW]",
                   help="size of the generated JPEG files; default --size (COCO's are about "
                        "480x640, which costs more to decode and crop)")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="timed calls per inference figure; default 30 (--quick: 5)")
    p.add_argument("--json-out", default=str(DEFAULT_JSON),
                   help="where to write the figures ('-' for stdout; default: %(default)s)")
    p.add_argument("--isa", default="native",
                   help="comma-separated instruction-set modes, each measured in a fresh "
                        "process: native (as the machine is), avx2 (TensorFlow's and PyTorch's "
                        "oneDNN and PyTorch's own kernels held to AVX2), avx2-eigen (also "
                        "TensorFlow's oneDNN ops off, TensorFlow's own default on AVX2 CPUs); "
                        "default native")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: alpha 0.35, 160 px, batch 4 (the peers: 160 px, batch 4), 3 steps "
                        "after 1 warmup, 1 repeat (about 1 min)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    args.isa = parse_isa(p, args.isa)
    apply_defaults(args, QUICK if args.quick else FULL)
    check_counts(p, args, ("batch_size", "steps", "repeats", "pipeline_images", "latency_runs"))
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    args.peers = [v.strip() for v in args.peers.split(",") if v.strip()]
    if not args.peers or any(v not in PEERS for v in args.peers):
        p.error(f"--peers: expected a comma-separated list of {', '.join(PEERS)}, got "
                f"{','.join(args.peers) or 'nothing'}")
    if args.peer_python:
        found = (args.peer_python if Path(args.peer_python).is_file()
                 else shutil.which(args.peer_python))
        if not found:
            where = ("--peer-python" if "--peer-python" in " ".join(argv or sys.argv)
                     else f"${PEER_PYTHON_ENV}")
            p.error(f"{where}: {args.peer_python} is not a file or a command on PATH (expected "
                    "a Python with torch and torchvision, e.g. peer/bin/python)")
        args.peer_python = found
    check_sizes(p, args, min_file_side=32)
    args.precisions = (["float32", "mixed_bfloat16"] if args.compare_bf16 else [args.precision])
    if args.compare_bf16 and args.precision != "float32":
        args.precisions.reverse()  # the --precision model first: it is the one inference uses
    return args


# Measurement ------------------------------------------------------------------------------------

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


def random_batches(anchors, batch_size: int, size: int, num_classes: int, seed: int,
                   distinct: int = DISTINCT_BATCHES):
    """An endless tf.data dataset cycling over `distinct` fixed batches of random pixels
    (float32 0..255, as our pipeline yields) with valid SSD targets; prefetched.
    Returns (dataset, one batch (x, y) for the forward / loss timings, mean positive anchors per
    image, every target: (box targets (distinct * batch, A, 4) float32, class targets
    (distinct * batch, A) int32), which peer b trains on)."""
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
    return ds, first, positives, (box_t, cls_t)


def with_static_shapes(ds, batch_size: int, size: int, num_anchors: int):
    """Give the pipeline's batches the static shapes of the random batches, so fit reuses the
    traced train step instead of tracing a second one."""
    import tensorflow as tf

    def fix(x, y):
        return (tf.ensure_shape(x, (batch_size, size, size, 3)),
                {"boxes": tf.ensure_shape(y["boxes"], (batch_size, num_anchors, 4)),
                 "classes": tf.ensure_shape(y["classes"], (batch_size, num_anchors))})

    return ds.map(fix)


# The PyTorch peers -----------------------------------------------------------------------------

class TorchPeer:
    """torch_peer.py running under another Python in a subprocess, one JSON object per line each
    way (see its docstring). Its stderr goes to a temp file, whose end is shown if it fails."""

    def __init__(self, python: str, argv: list[str]):
        self.python = python
        self._stderr = tempfile.TemporaryFile(mode="w+")
        try:
            self.proc = subprocess.Popen([python, str(PEER_SCRIPT), *argv], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                         bufsize=1)
        except OSError as e:
            self._stderr.close()
            raise BenchmarkError(f"--peer-python {python}: cannot run it ({e})") from e
        self.info = None

    def _stderr_tail(self, chars: int = 3000) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().strip()
        return ("..." + text[-chars:]) if len(text) > chars else text

    def _fail(self, what: str):
        raise BenchmarkError(f"the PyTorch peer ({self.python} {PEER_SCRIPT.name}) {what}; "
                             f"its stderr:\n{self._stderr_tail()}\n(--peer-python must be a "
                             f"Python with torch and torchvision, e.g. a venv made with "
                             f"pip install torch==2.14.1 torchvision==0.29.1)")

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._fail(f"exited with status {self.proc.wait()}")
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            self._fail(f"answered {line.strip()[:200]!r} instead of a JSON line")
        if "error" in message:
            self._fail(f"failed: {message['error']}")
        return message

    def ready(self) -> dict:
        """The peer's {"torch", "torchvision", "threads", "peers": {name: {...}}, ...}, once
        it has built its models."""
        if self.info is None:
            self.info = self._receive()["ready"]
        return self.info

    def time(self, name: str, steps: int, warmup: int) -> dict:
        """`warmup` untimed and `steps` timed train steps of peer `name` -> {"images_per_sec",
        "seconds", "loss", "finite"}."""
        return self.request({"time": name, "steps": steps, "warmup": warmup})

    def request(self, message: dict) -> dict:
        """Send one request (see torch_peer.py's protocol) and return its answer."""
        self.ready()
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError:
            self._fail(f"stopped reading its input (status {self.proc.wait()})")
        return self._receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"quit": true}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def peer_b_mismatch(cfg) -> str | None:
    """Why peer b (our default detector network rebuilt in torchvision) would not be our network
    under `cfg`, or None when it is."""
    bb, head = cfg.model.backbone, cfg.model.head
    if bb.name != "mobilenet_v2":
        return f"model.backbone.name is {bb.name}; peer b is mobilenet_v2"
    if bb.output_stride != 32:
        return f"model.backbone.output_stride is {bb.output_stride}; peer b is 32"
    if tuple(head.features) != PEER_B_TAPS:
        return f"model.head.features is {list(head.features)}; peer b taps {list(PEER_B_TAPS)}"
    if not bb.trainable:
        return "model.backbone.trainable is false; peer b trains its backbone"
    return None


def peer_threads(args) -> int:
    """The peers' thread count: --threads, else the cores this process may run on (TF's
    default intra-op count)."""
    if args.threads:
        return args.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def anchors_per_location(cfg, model) -> list[int]:
    """Anchors per cell of each map the detector `model` (of `cfg`) predicts on: [3, 6, 6, ...]."""
    from mobilevision.tasks.detection import anchor_generator

    return anchor_generator(cfg).num_anchors_per_location(len(model.decoder.map_sizes))


def start_peer(args, cfg, per_location, targets, folder: Path, names: list[str]) -> TorchPeer:
    """Write our encoded `targets` (box (n, A, 4), class (n, A)) into `folder` as raw arrays for
    peer b, start torch_peer.py for the peers `names` at our batch, size, classes, width, anchors
    per location (`per_location`, as `anchors_per_location` gives them), loss and optimizer, and
    wait until it has built them."""
    box_t, cls_t = targets
    (folder / "boxes.bin").write_bytes(box_t.astype("<f4").tobytes())
    (folder / "classes.bin").write_bytes(cls_t.astype("<i4").tobytes())
    o = cfg.train.optimizer
    optimizer = {"name": o.name, "learning_rate": o.learning_rate, "momentum": o.momentum,
                 "rho": o.rho, "epsilon": o.epsilon, "weight_decay": cfg.train.weight_decay}
    peer = TorchPeer(args.peer_python, [
        "--peers", ",".join(names), "--batch-size", str(args.batch_size), "--size", str(args.size),
        "--num-classes", str(cfg.model.num_classes), "--alpha", str(cfg.model.backbone.alpha),
        "--anchors-per-location", ",".join(str(n) for n in per_location),
        "--loss", cfg.model.head.loss, "--neg-pos-ratio", str(cfg.model.head.neg_pos_ratio),
        "--optimizer", json.dumps(optimizer), "--targets", str(folder),
        "--distinct", str(DISTINCT_BATCHES), "--threads", str(peer_threads(args)),
        "--seed", str(cfg.seed)])
    try:
        peer.ready()
    except BaseException:
        peer.close()
        raise
    return peer


def peer_results(args, cfg, primary: str, med: dict, runs: dict, losses: dict, info: dict | None,
                 skipped: dict, ours: dict) -> dict:
    """The "peers" section of the JSON: each peer's images/s, runs, MAdds/s and the ratio ours /
    peer with its target; or why it was not measured."""
    at_target = (args.batch_size == TARGET_SETUP["batch_size"] and args.size == TARGET_SETUP["size"]
                 and float(cfg.model.backbone.alpha) == TARGET_SETUP["alpha"])
    out = {"python": args.peer_python, "measured": bool(info), "targets": PEER_TARGETS,
           "target_setup": TARGET_SETUP, "at_target_setup": at_target,
           "madds_counted_by": "torch.utils.flop_counter.FlopCounterMode, FLOPs / 2, batch-1 "
                               "forward of the network (backbone + extras + head)",
           "gmadds_per_sec": "forward MAdds per image x train images/s"}
    if not args.peer_python:
        out["reason"] = f"no --peer-python (or ${PEER_PYTHON_ENV})"
    if info:
        out.update({key: info.get(key) for key in ("torch", "torchvision", "python", "threads",
                                                   "interop_threads", "cpu_capability",
                                                   "onednn_max_cpu_isa")})
    for name in PEERS:
        key = f"peer {name}"
        if key in med:
            p = dict(info["peers"][name])
            ratio = med[primary] / med[key]
            p.update(images_per_sec=med[key], runs=runs[key], losses=losses[name],
                     gmadds_per_sec=p["madds"] * med[key] / 1e9, ratio=ratio,
                     target=PEER_TARGETS[name],
                     meets_target=(ratio >= PEER_TARGETS[name]) if at_target else None)
            out[name] = {"measured": True, "name": PEERS[name], **p}
        else:
            reason = skipped.get(name) or out.get("reason") or "not in --peers"
            out[name] = {"measured": False, "name": PEERS[name], "reason": reason,
                         "target": PEER_TARGETS[name]}
    out["ours"] = ours
    return out


# Report -----------------------------------------------------------------------------------------

def format_table(r: dict) -> str:
    s, t, b, p, e, inf = (r["setup"], r["train_step"], r["breakdown"], r["pipeline"],
                          r["end_to_end"], r["inference"])
    primary = t[s["precisions"][0]]
    rows = []  # (label, value, value format, what follows); value None: a heading
    for prec in s["precisions"]:
        v = t[prec]
        rows.append((f"train step, {prec}", v["images_per_sec"], ".1f", fmt_runs(v["runs"])))
    busy = t.get("others_cpu_share")
    busy_note = ("" if busy is None or busy <= BUSY
                 else " (BUSY MACHINE: not an idle figure)")
    if "bf16_speedup" in t:
        rows.append(("  speed-up mixed_bfloat16 / float32", t["bf16_speedup"], ".2f",
                     "> 1: bfloat16 helps on this CPU"))
    peers = r["peers"]
    for name, label in PEERS.items():
        q = peers[name]
        if q["measured"]:
            rows.append((f"PyTorch peer {name}: {label}", q["images_per_sec"], ".1f",
                         fmt_runs(q["runs"])))
        else:
            rows.append((f"PyTorch peer {name}: {label}", None, "", f"NOT MEASURED: {q['reason']}"))
    for name in PEERS:
        q = peers[name]
        label = f"  ratio ours ({s['precisions'][0]}) / peer {name}"
        target = f"target >= {q['target']:.1f}x"
        if not q["measured"]:
            rows.append((label, None, "", f"NOT MEASURED ({target})"))
        elif q["meets_target"] is None:
            rows.append((label, q["ratio"], ".2f", f"{target} applies at batch 8, 320 px, alpha 1.0"))
        else:
            rows.append((label, q["ratio"], ".2f",
                         f"{target}: {'OK' if q['meets_target'] else 'BELOW TARGET'}{busy_note}"))
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
    rows.append((f"inference, batch {s['batch_size']}: + decoder",
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
        *([] if busy is None else [
            f"  other processes kept {100 * busy:.0f}% of the {os.cpu_count()} cores busy while the "
            f"train steps were timed" + ("" if busy <= BUSY else
                                         ": A BUSY MACHINE, not an idle machine's figures and ratios")]),
        "",
        *table_lines(rows, width),
    ]

    lines += side_by_side(r)
    one = inf["batch1"]
    lines += ["", f"  inference latency, batch 1 ({s['precisions'][0]}){'':{max(0, width - 34 - len(s['precisions'][0]))}s}"
                  f"{'median ms':>10s} {'p90 ms':>8s}"]
    for key, label in (("raw", "model call (tf.function)"),
                       ("with_postprocess", "model call + decoder (tf.function)"),
                       ("predict_on_batch", "model.predict_on_batch (decoded)"),
                       ("postprocess", "decoder alone (decode + NMS)")):
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
    if r.get("plain_keras"):
        pk = r["plain_keras"]
        lines += ["", f"  plain Keras build of the same network: {pk['images_per_sec']:.2f} images/s "
                      f"(runs {fmt_runs(pk['runs'])}); ours / plain {pk['ours_over_plain']:.2f}x"]
    if r.get("layers"):
        lines += ["", *format_layer_profile(f"  our train step, batch {s['batch_size']}", r["layers"])]
    if s["quick"]:
        lines.append("  (--quick is a smoke test: too few steps, and not the targets' setup, for "
                     "the ratios to mean anything)")
    return "\n".join(lines)


def side_by_side(r: dict) -> list[str]:
    """Ours and each measured peer: trainable params, MAdds, anchors, logits per anchor,
    images/s and MAdds/s; empty when no peer was measured."""
    s, peers = r["setup"], r["peers"]
    measured = [name for name in PEERS if peers[name]["measured"]]
    if not measured:
        return []
    ours = peers["ours"]
    rows = [(f"ours, Keras {s['keras']} + TF {s['tensorflow']} ({s['precisions'][0]})", ours,
             r["train_step"][s["precisions"][0]]["images_per_sec"])]
    rows += [(f"peer {n}: {PEERS[n]}", peers[n], peers[n]["images_per_sec"]) for n in measured]
    width = max(len(label) for label, *_ in rows) + 2
    lines = ["", f"  side by side, same run, alternating (batch {s['batch_size']}, {s['size']} px):",
             f"    {'':{width}s}{'params':>8s} {'MAdds':>7s} {'anchors':>8s} {'logits':>7s} "
             f"{'images/s':>9s} {'GMAdds/s':>9s}"]
    for label, q, ips in rows:
        lines.append(f"    {label:{width}s}{q['params'] / 1e6:7.2f}M {q['madds'] / 1e9:6.3f}G "
                     f"{q['num_anchors']:8d} {q['num_classes']:7d} {ips:9.1f} "
                     f"{q['madds'] * ips / 1e9:9.1f}")
    lines.append(f"    PyTorch {peers['torch']}, torchvision {peers['torchvision']}, "
                 f"{peers['threads']} thread{'s' if peers['threads'] != 1 else ''} (intra and inter-op); MAdds: ours profile_model, the "
                 f"peers FlopCounterMode FLOPs / 2; GMAdds/s = forward MAdds per image x images/s")
    if "a" in measured:
        lines.append("    peer a matches boxes to anchors inside its step (torchvision's SSD); ours "
                     "and peer b do it in the input pipeline")
    bad = [n for n in measured
           if any(v is None or not math.isfinite(v) for v in peers[n]["losses"])]
    if bad:
        lines.append(f"    WARNING: peer {', '.join(bad)} reached a non-finite loss")
    return lines


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
    from mobilevision.tasks import TASKS, build_model, training_dataset
    from mobilevision.tasks.detection import anchor_generator
    from mobilevision.tasks.trainer import set_precision
    from mobilevision.utils import set_seed

    b, s = args.batch_size, args.size
    # Random weights: speed does not depend on them, and nothing downloads.
    base = ["model.backbone.weights=null", *(QUICK_OVERRIDES if args.quick else []),
            *args.overrides,
            f"model.input_size=[{s}, {s}]", f"train.batch_size={b}"]
    cfgs = {p: mv.load_config(args.config, [*base, f"train.precision={p}"]) for p in args.precisions}
    primary = args.precisions[0]
    cfg = cfgs[primary]
    set_seed(cfg.seed)
    alpha, k = cfg.model.backbone.alpha, cfg.model.num_classes
    log = make_log(args.json_out)

    # 1. Train step on random in-memory batches with valid targets.
    log(f"building the detector ({', '.join(args.precisions)}) ...")
    detection = TASKS["detection"]
    steps_per_epoch = 1000  # only shapes the learning-rate schedule; any value times the same
    models = {}
    for prec in args.precisions:
        set_precision(cfgs[prec])  # the policy applies to layers created from here on
        model = build_model(cfgs[prec])
        detection.compile(model, cfgs[prec], steps_per_epoch)
        model.jit_compile = False  # as fit resolves "auto" on CPU; stated, not left implicit
        models[prec] = model
    set_precision(cfg)
    model = models[primary]
    anchors = model.decoder.anchors
    per_location = anchors_per_location(cfg, model)
    stats = profile_model(model)
    memory_ds, (x_b, y_b), positives, targets = random_batches(anchors, b, s, k, cfg.seed)
    if args.plain_keras:
        models[PLAIN] = plain_keras_ssdlite(s, alpha, k, anchor_generator(cfg),
                                            cfg.train.optimizer.learning_rate)[0]

    # Precisions and the PyTorch peers alternate: ours, peer a, peer b, ours, ...; each model's
    # first run traces its train step (the peers' warm up) during warmup.
    skipped = {}
    names = [n for n in args.peers if args.peer_python]
    if "b" in names and peer_b_mismatch(cfg):  # not our network under this config
        skipped["b"] = peer_b_mismatch(cfg)
        names.remove("b")
    peer_info, peer_losses = None, {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="mv_detection_peer_") as peer_dir:
        peer = None
        if names:
            log(f"starting the PyTorch peers ({', '.join(names)}) under {args.peer_python} ...")
            peer = start_peer(args, cfg, per_location, targets, Path(peer_dir), names)
        try:
            others = {}
            if peer is not None:
                peer_info = peer.ready()
                mine, theirs = len(anchors), peer_info["peers"].get("b", {}).get("num_anchors")
                if theirs is not None and theirs != mine:
                    raise BenchmarkError(f"peer b predicts on {theirs} anchors, ours on {mine}: "
                                         "not the same network")

                def timer(name):
                    def fn(steps, warmup):
                        r = peer.time(name, steps, warmup)
                        peer_losses[name].append(r["loss"])
                        return r["images_per_sec"]
                    return fn

                others = {f"peer {n}": timer(n) for n in names}
            # What other processes take from the cores while the train steps are timed (ours and
            # the peer's own CPU time left out): a busy machine says the ratios are not idle ones.
            pids = [peer.proc.pid] if peer is not None else []
            cpu_start = cpu_sample(pids)
            runs, med = alternating_fit(models, memory_ds, b, args.steps, args.warmup,
                                        args.repeats, log, others=others)
            busy = others_share(cpu_start, cpu_sample(pids))
        finally:
            if peer is not None:
                peer.close()
    for prec in [*args.precisions[1:], *([PLAIN] if args.plain_keras else [])]:
        del models[prec]
    layers = None
    if args.layers:
        log("each layer's forward and backward alone ...")
        layers = layer_profile(model, x_b, 1000 * b / med[primary], runs=3 if args.quick else 5)

    # 2. Forward alone and loss alone, same batch, for the breakdown; inference. The decoded
    # outputs are fetched as numpy, as predict_on_batch returns them.
    log("forward, loss and inference timings ...")
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    decode = tf.function(model.decode, reduce_retracing=True)
    decoded = tf.function(lambda x: model.decode(model(x, training=False)),
                          reduce_retracing=True)

    def numpy(fn, *inputs):
        return lambda: {key: v.numpy() for key, v in fn(*inputs).items()}

    x1 = tf.constant(x_b[:1])
    xb = tf.constant(x_b)
    latency_warmup = 2 if args.quick else 3
    peak = matmul_gmacs()
    raw_b = time_calls(lambda: forward(xb), args.latency_runs, latency_warmup)
    outputs_b = {key: tf.constant(v) for key, v in numpy(forward, xb)().items()}
    y_const = {key: tf.constant(v) for key, v in y_b.items()}
    loss_fn = tf.function(lambda y, p: model.ssd_loss(y, p))
    loss_b = time_calls(lambda: loss_fn(y_const, outputs_b), args.latency_runs, latency_warmup)
    post_b = time_calls(numpy(decoded, xb), args.latency_runs, latency_warmup)
    outputs_1 = {key: tf.constant(v) for key, v in numpy(forward, x1)().items()}
    batch1 = {
        "raw": time_calls(lambda: forward(x1), args.latency_runs, latency_warmup),
        "with_postprocess": time_calls(numpy(decoded, x1), args.latency_runs, latency_warmup),
        "predict_on_batch": time_calls(lambda: model.predict_on_batch(x1), args.latency_runs,
                                       latency_warmup),
        "postprocess": time_calls(numpy(decode, outputs_1), args.latency_runs, latency_warmup),
    }

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
        # The measured model's anchors and input size: the targets fit it by construction.
        pipeline_ds, n = training_dataset(pcfg, model)
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
    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    ours = {"params": trainable, "madds": madds, "num_anchors": int(len(anchors)),
            "num_classes": k + 1, "anchors_per_location": per_location,
            "gmadds_per_sec": madds * med[primary] / 1e9}
    peers = peer_results(args, cfg, primary, med, runs, peer_losses, peer_info, skipped, ours)

    train_step = {prec: {"images_per_sec": med[prec], "runs": runs[prec],
                         "gmadds_per_sec": madds * med[prec] / 1e9} for prec in args.precisions}
    train_step["others_cpu_share"] = busy
    if args.compare_bf16:
        train_step["bf16_speedup"] = med["mixed_bfloat16"] / med["float32"]

    def per_batch(timing):
        return {"median_ms": timing["median_ms"], "p90_ms": timing["p90_ms"],
                "images_per_sec": 1000 * b / timing["median_ms"], "runs_ms": timing["runs_ms"]}

    return {
        "benchmark": "detection_speed",
        "time": utc_timestamp(),
        "machine_extra": (f"; PyTorch {peer_info['torch']} kernels: "
                          f"{peer_info.get('cpu_capability')}" if peer_info else ""),
        "setup": {
            "config": config_name(cfg, args.config),
            "overrides": base, "quick": args.quick, "alpha": alpha, "size": s, "batch_size": b,
            "num_classes": k, "num_anchors": int(len(anchors)), "precisions": args.precisions,
            "params": int(model.count_params()), "trainable_params": trainable, "madds": madds,
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
        "plain_keras": ({"images_per_sec": med[PLAIN], "runs": runs[PLAIN],
                         "ours_over_plain": med[primary] / med[PLAIN]} if args.plain_keras else None),
        "layers": layers,
        "peers": peers,
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


def run_isas(args) -> dict:
    """--isa with several modes: the whole benchmark once per mode, each in a fresh process
    (its table printed as it ends), then the train-step figures side by side."""
    runs = run_per_isa(Path(__file__), sys.argv[1:], args.isa, make_log(args.json_out))
    return {"benchmark": "detection_speed", "time": utc_timestamp(), "machine": machine(),
            "isa": runs}


def format_isas(result: dict) -> str:
    lines = ["", "  train images/s per instruction-set mode (each a run of its own; ratios within "
                 "a run):"]
    for isa, r in result["isa"].items():
        peers, t = r["peers"], r["train_step"]
        ours = t[r["setup"]["precisions"][0]]["images_per_sec"]
        cells = [f"ours {ours:.1f}"]
        for name in PEERS:
            p = peers.get(name, {})
            if p.get("measured"):
                cells.append(f"peer {name} {p['images_per_sec']:.1f} (ours / {name} "
                             f"{p['ratio']:.2f}x, target {p['target']}x)")
        m = r.get("machine") or {}
        held = m.get("onednn_max_cpu_isa") or "not held"
        ops = {True: ", TF oneDNN ops on", False: ", TF oneDNN ops off"}.get(m.get("tf_onednn_ops"), "")
        lines.append(f"    {isa:10s} oneDNN {m.get('onednn_isa') or '?'} ({held}{ops}): "
                     + ", ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if len(args.isa) > 1 or not in_isa_mode(args.isa[0]):  # each mode in a fresh process
        return run_benchmark("detection_speed.py", args, run_isas, format_isas)
    return run_benchmark("detection_speed.py", args, run, format_table)


if __name__ == "__main__":
    sys.exit(main())
