#!/usr/bin/env python
"""Where the detector's train step goes, per op type: ours (TensorFlow) beside peer b (our
network from torchvision parts, `torch_peer.py`) at the same batch, size and threads.

    python benchmarks/op_profile.py --peer-python peer/bin/python            # SSDLite-320, batch 8
    python benchmarks/op_profile.py --peer-python peer/bin/python --isa native,avx2
    python benchmarks/op_profile.py --quick                                    # alpha 0.35, 160 px

A benchmark, not a test. Ours: the detector of `detection_speed.py` (the config's model, loss and
optimizer; random pixels with valid encoded targets) trains `--warmup` steps, then `--steps`
steps under TensorFlow's profiler (`tf.profiler.experimental`, once per process: a second
session in one process records no op-level events with TF 2.21), whose trace (the XSpace file)
gives every executed op's time by name and type. Peer b runs the same number of steps under
`torch.profiler` (self CPU time of every aten op, backward included). Both are summed per step
into the same rows:

  BatchNorm            FusedBatchNormV3 / FusedBatchNormGradV3, | native_batch_norm(_backward)
                       and every op in a BatchNormalization
                       layer's or its gradient's name scope
  Conv2D (1x1, 3x3)    Conv2D, Conv2DBackpropInput / Filter     | (mkldnn_)convolution(_backward)
                       MatMul (ours: the 1x1 convs in training) |
  depthwise 3x3        DepthwiseConv2dNative(+Backprop*)        | the same ops, groups = channels
  ReLU6                Relu6, Relu6Grad                         | hardtanh(_backward)
  padding              Pad, and Slice in the backward           | (inside the convolution)
  loss, optimizer      ops in the loss / optimizer scopes       | ops in the loss / Optimizer.step
  other                everything else: weight decay (ours: Square, Sum, AddN on every kernel
                       and its gradient), elementwise ops, reads and casts, small ops

Op times summed over threads can exceed the wall step (2 inter-op threads run ops side by side),
so each side's shares are of its own summed op time; the wall step under the profiler is shown
too. With --isa native,avx2 the whole measurement runs once per instruction set, each in a fresh
process; avx2 runs both frameworks as on a CPU without AVX-512 (common.ISA_ENV:
`ONEDNN_MAX_CPU_ISA=AVX2`, `ATEN_CPU_CAPABILITY=avx2`), avx2-eigen also with TensorFlow's oneDNN
ops off (`TF_ENABLE_ONEDNN_OPTS=0`, TensorFlow's own default on CPUs without AVX-512 VNNI / BF16
or AMX, which `import mobilevision` overrides on x86-64).

Writes the JSON (--json-out, default benchmarks/results/op_profile.json) and prints the table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BenchmarkError, in_isa_mode, machine, machine_line, parse_isa, run_benchmark, run_per_isa,
    utc_timestamp)

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "op_profile.json"
ROWS = ("BatchNorm", "Conv2D (1x1, 3x3)", "depthwise 3x3", "ReLU6", "padding", "loss",
        "optimizer", "other")

TF_TYPES = {
    "BatchNorm": ("FusedBatchNormV3", "FusedBatchNormGradV3", "_MklFusedBatchNormV3",
                  "_MklFusedBatchNormGradV3", "_MklNativeFusedBatchNormV3",
                  "_MklNativeFusedBatchNormGradV3", "FusedBatchNorm", "FusedBatchNormGrad"),
    "Conv2D (1x1, 3x3)": ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
                          "_MklNativeConv2D", "_MklNativeConv2DBackpropInput",
                          "_MklNativeConv2DBackpropFilter", "_FusedConv2D", "_MklNativeFusedConv2D",
                          "Conv2DBackpropFilterWithBias", "_MklNativeConv2DWithBias",
                          "_MklNativeConv2DBackpropFilterWithBias",
                          # the 1x1 convs as mobilevision trains them where TensorFlow's oneDNN
                          # ops are on (workarounds.Conv2D): a MatMul, its gradient two more
                          "MatMul", "_MklMatMul", "_MklNativeMatMul"),
    "depthwise 3x3": ("DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                      "DepthwiseConv2dNativeBackpropFilter", "_MklNativeDepthwiseConv2dNative",
                      "_MklNativeDepthwiseConv2dNativeBackpropInput",
                      "_MklNativeDepthwiseConv2dNativeBackpropFilter",
                      "_FusedDepthwiseConv2dNative", "_MklNativeFusedDepthwiseConv2dNative"),
    "ReLU6": ("Relu6", "Relu6Grad", "_MklNativeRelu6", "_MklNativeRelu6Grad"),
    "padding": ("Pad", "PadV2", "MirrorPad"),
}
TF_ROW = {t: row for row, types in TF_TYPES.items() for t in types}
TORCH_ROW = {"aten::native_batch_norm": "BatchNorm",
             "aten::native_batch_norm_backward": "BatchNorm",
             "aten::_native_batch_norm_legit": "BatchNorm",
             "aten::_native_batch_norm_legit_no_training": "BatchNorm",
             "aten::hardtanh": "ReLU6", "aten::hardtanh_": "ReLU6",
             "aten::hardtanh_backward": "ReLU6", "aten::constant_pad_nd": "padding"}
# BatchNormalization layers' name scopes (block_1_expand_BN, bn_Conv1, Conv_1_bn,
# batch_normalization_3, ...) and mobilevision.workarounds' gradient scope.
BN_SCOPE = re.compile(r"(^bn_|_bn(_\d+)?$|_BN(_\d+)?$|^batch_normalization(_\d+)?$|"
                      r"^batch_norm_grad(_\d+)?$)")
OPTIMIZER_SCOPES = {"rm_sprop", "adam", "adam_w", "sgd", "nadam", "lion", "adamax", "adagrad",
                    "ftrl", "lamb", "loss_scale_optimizer"}
# Host-side bookkeeping lines of TensorFlow's trace, not ops.
TF_NOT_OPS = ("ExecutorState", "ParallelFor", "ThreadpoolListener", "Executor", "EagerExecute",
              "FunctionRun", "KernelAndDevice", "Iterator::", "__inference")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="op_profile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--config", default="coco_ssdlite.yaml")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (--quick: 4)")
    p.add_argument("--size", type=int, default=None, help="default 320 (--quick: 160)")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="TF intra/inter-op and torch threads (default: the usable cores)")
    p.add_argument("--peer-python", default=os.environ.get("MOBILEVISION_PEER_PYTHON") or None,
                   help="a Python with torch and torchvision for peer b (as detection_speed.py)")
    p.add_argument("--isa", default="native",
                   help="comma-separated: native (as the machine is), avx2 (oneDNN and "
                        "ATen held to AVX2), avx2-eigen (also TensorFlow's oneDNN ops off), "
                        "each in a fresh process (default: native)")
    p.add_argument("--top", type=int, default=12, help="op types listed per side (default 12)")
    p.add_argument("--quick", action="store_true", help="alpha 0.35, 160 px, batch 4, 2 steps")
    p.add_argument("--json-out", default=str(DEFAULT_JSON), help="'-': JSON to stdout")
    args = p.parse_args(argv)
    quick = args.quick
    args.batch_size = args.batch_size or (4 if quick else 8)
    args.size = args.size or (160 if quick else 320)
    args.steps = args.steps or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 3)
    args.isa = parse_isa(p, args.isa)
    if min(args.batch_size, args.size, args.steps) < 1 or args.warmup < 1:
        p.error("--batch-size, --size, --steps and --warmup must be at least 1")
    return args


# Ours: TensorFlow's trace ------------------------------------------------------------------------

def tf_row(op_name: str, op_type: str) -> str:
    """The table row of one TensorFlow op, from its type, else its name scope."""
    if op_type in TF_ROW:
        return TF_ROW[op_type]
    scope = op_name.lower()
    # The optimizer's and the loss's name scopes in Keras 3's train step (Keras names the
    # optimizer's scope from its class: rm_sprop, adam, sgd, ...).
    if OPTIMIZER_SCOPES & set(scope.split("/")):
        return "optimizer"
    if any(BN_SCOPE.search(segment) for segment in op_name.split("/")):
        return "BatchNorm"  # the layers' own ops, and the written-out gradient's
    if op_type == "Slice" and "gradient_tape" in scope and "pad" in scope:
        return "padding"  # the gradient of Pad
    if "loss" in scope:
        return "loss"
    return "other"


def tf_trace_ops(logdir: Path) -> list[dict]:
    """[{"name", "type", "ms", "calls"}] of every op event in the XSpace trace under `logdir`
    (TensorFlow's executor threads; events are 'name:Type'), summed by (name, type)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(logdir.glob("**/*.xplane.pb"))
    if not files:
        raise BenchmarkError(f"TensorFlow's profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    totals = defaultdict(lambda: [0, 0])
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                label = meta[event.metadata_id].name
                if ":" not in label or "::" in label or label.startswith(TF_NOT_OPS):
                    continue
                name, op_type = label.rsplit(":", 1)
                totals[(name, op_type)][0] += event.duration_ps
                totals[(name, op_type)][1] += 1
    return [{"name": n, "type": t, "ms": ps / 1e9, "calls": c}
            for (n, t), (ps, c) in totals.items()]


def profile_ours(model, ds, steps: int, warmup: int) -> dict:
    """`warmup` then `steps` train steps of the compiled `model` on `ds` (fit, one epoch each),
    the second under TensorFlow's profiler. -> {"step_ms", "ops": [...] per step}."""
    import tensorflow as tf

    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory(prefix="mv_op_profile_") as logdir:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        try:
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        finally:
            seconds = time.perf_counter() - t0
            tf.profiler.experimental.stop()
        ops = tf_trace_ops(Path(logdir))
    if not any(op["type"] in TF_ROW for op in ops):
        raise BenchmarkError("TensorFlow's trace holds no convolution or BatchNorm op events "
                             "(only executor events): the op table cannot be made")
    for op in ops:
        op["ms"] /= steps
        op["calls"] /= steps
        op["row"] = tf_row(op["name"], op["type"])
    return {"step_ms": 1000 * seconds / steps, "ops": ops}


# Peer b: torch.profiler -------------------------------------------------------------------------

def torch_row(op: dict) -> str:
    name = op["name"]
    if "conv" in name:
        return "depthwise 3x3" if op["kind"] == "depthwise" else "Conv2D (1x1, 3x3)"
    if name in TORCH_ROW:
        return TORCH_ROW[name]
    if op["scope"] in ("loss", "optimizer"):
        return op["scope"]
    return "other"


# Tables -----------------------------------------------------------------------------------------

def summarize(ops: list[dict], key: str, label) -> dict:
    """{"rows": {row: ms}, "types": [(type, ms, row)], "total_ms"} of one side's ops."""
    rows = dict.fromkeys(ROWS, 0.0)
    types = defaultdict(float)
    type_row = {}
    for op in ops:
        rows[op["row"]] += op[key]
        types[label(op)] += op[key]
        type_row[label(op)] = op["row"]
    ranked = sorted(types.items(), key=lambda kv: -kv[1])
    return {"rows": rows, "total_ms": sum(rows.values()),
            "types": [[t, ms, type_row[t]] for t, ms in ranked]}


def measure(args) -> dict:
    """One ISA's measurement in this process: ours, then peer b."""
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import mobilevision as mv
    from detection_speed import (anchors_per_location, peer_b_mismatch, random_batches,
                                 start_peer)
    from mobilevision.tasks import TASKS, build_model
    from mobilevision.utils import set_seed

    b, s = args.batch_size, args.size
    overrides = ["model.backbone.weights=null", *(["model.backbone.alpha=0.35"] if args.quick
                                                  else []),
                 *args.overrides, f"model.input_size=[{s}, {s}]", f"train.batch_size={b}"]
    cfg = mv.load_config(args.config, overrides)
    set_seed(cfg.seed)
    model = build_model(cfg)
    TASKS["detection"].compile(model, cfg, 1000)
    model.jit_compile = False
    ds, _, _, targets = random_batches(model.decoder.anchors, b, s, cfg.model.num_classes,
                                       cfg.seed)
    ours = profile_ours(model, ds, args.steps, args.warmup)
    result = {"ours": ours, "peer_b": None, "machine": machine(), "setup": {
        "config": args.config, "overrides": overrides, "batch_size": b, "size": s,
        "steps": args.steps, "warmup": args.warmup, "tensorflow": tf.__version__}}
    if args.peer_python and not peer_b_mismatch(cfg):
        args.peers = ["b"]
        with tempfile.TemporaryDirectory(prefix="mv_op_profile_peer_") as folder:
            peer = start_peer(args, cfg, anchors_per_location(cfg, model), targets,
                              Path(folder), ["b"])
            try:
                info = peer.ready()
                answer = peer.request({"profile": "b", "steps": args.steps,
                                       "warmup": args.warmup})
            finally:
                peer.close()
        for op in answer["ops"]:
            op["row"] = torch_row(op)
        result["peer_b"] = {"step_ms": answer["step_ms"], "ops": answer["ops"],
                            "torch": info["torch"], "cpu_capability": info.get("cpu_capability")}
    elif args.peer_python:
        result["peer_b_reason"] = peer_b_mismatch(cfg)
    return result


def run(args) -> dict:
    out = {"benchmark": "op_profile", "time": utc_timestamp(), "machine": machine()}
    if len(args.isa) == 1 and in_isa_mode(args.isa[0]):
        out["isa"] = {args.isa[0]: measure(args)}
    else:
        runs = run_per_isa(Path(__file__), sys.argv[1:], args.isa,
                           lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        out["isa"] = {isa: r["isa"][isa] for isa, r in runs.items()}
    return out


def format_table(result: dict, top: int = 12) -> str:
    lines = []
    for isa, r in result["isa"].items():
        ours = summarize(r["ours"]["ops"], "ms",
                         lambda o: o["type"] + ("" if o["type"] in TF_ROW else f" ({o['row']})"))
        peer = None
        if r.get("peer_b"):
            peer = summarize(r["peer_b"]["ops"], "self_ms",
                             lambda o: o["name"] + (f" ({o['kind']})" if o["kind"] else ""))
        s = r["setup"]
        extra = (f"; PyTorch {r['peer_b']['torch']} kernels: {r['peer_b']['cpu_capability']}"
                 if r.get("peer_b") else "")
        lines += [f"  [{isa}] {machine_line(r['machine'], extra)}",
                  f"  train step, batch {s['batch_size']} at {s['size']} px, ms per step "
                  f"(share of that side's summed op time)"]
        head = f"  {'':20s}{'ours (TensorFlow)':>22s}" + (f"{'peer b (PyTorch)':>22s}" if peer else "")
        lines.append(head)

        def cell(side, row):
            ms = side["rows"][row]
            return f"{ms:9.1f} ({100 * ms / max(side['total_ms'], 1e-9):4.1f}%)".rjust(22)

        for row in ROWS:
            lines.append(f"  {row:20s}{cell(ours, row)}" + (cell(peer, row) if peer else ""))
        lines.append(f"  {'ops summed':20s}{ours['total_ms']:15.1f}".ljust(44)
                     + (f"{peer['total_ms']:15.1f}" if peer else ""))
        lines.append(f"  {'wall step (profiled)':20s}{r['ours']['step_ms']:15.1f}".ljust(44)
                     + (f"{r['peer_b']['step_ms']:15.1f}" if peer else ""))
        for name, side in (("ours", ours), ("peer b", peer)):
            if side is None:
                continue
            lines.append(f"  {name}: the {top} largest op types (ms per step, row)")
            for t, ms, row in side["types"][:top]:
                lines.append(f"    {t:44s}{ms:9.1f}  {row}")
        if r.get("peer_b_reason"):
            lines.append(f"  peer b: not measured ({r['peer_b_reason']})")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_benchmark("op_profile.py", args, run,
                         lambda r: format_table(r, args.top))


if __name__ == "__main__":
    sys.exit(main())
