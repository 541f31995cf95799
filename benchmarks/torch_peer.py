#!/usr/bin/env python
"""The PyTorch peers of `detection_speed.py`: a subprocess that builds SSDLite detectors in
PyTorch and times their train steps when asked. It imports only torch, torchvision and the
standard library, and runs under its own Python (`--peer-python`), so torch is never a dependency
of the toolkit.

Peers (`--peers a,b`):

a. torchvision's `ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)`: what a
   PyTorch user picks. Nothing downloads; without backbone weights torchvision builds the
   reduced-tail MobileNetV3 and every backbone layer trains. `num_classes` is OUR count
   (objects + background, 81 for COCO's 80), not torchvision's default 91, so both predict the
   same number of logits per anchor. Its own anchors (6 per location on all six maps, 3234 at
   320 px) and its train-mode forward: the transform (normalize, resize to the fixed size, an
   identity resize at 320 px), backbone, head, anchors, IoU matching of the boxes and box
   encoding inside the step, softmax CE with 3:1 hard negative mining + smooth L1. SGD as the
   reference recipe (references/detection, ssdlite320: lr 0.15, momentum 0.9, weight decay 4e-5,
   none on norm layers, the first epoch's linear warmup from lr / 1000). Input: images 0..1 with
   1-4 random boxes each (side 10-60% of the image, aspect 1/2..2, labels 1..K), as ours.
   At a --size other than 320 the transform's fixed size is set to it (--quick).
b. Our network from torchvision parts: `torchvision.models.mobilenet_v2(width_mult=alpha)`
   features, tapped where ours is (the expansion 1x1 + ReLU6 of block 13, `features[14].conv[0]`,
   576 channels at stride 16 = keras `block_13_expand_relu`; the final 1280-channel conv
   `features[18]` at stride 32 = `out_relu`), torchvision's SSDLite extra blocks (1x1 d/2 ->
   depthwise 3x3 stride 2 -> 1x1 d, BN + ReLU6; d = max(16, int(alpha * (512, 256, 256, 128))))
   and torchvision's `SSDLiteHead` (depthwise 3x3 + BN + ReLU6, then a 1x1 conv with bias, per
   map) with our anchors per location (`--anchors-per-location`, 3,6,6,6,6,6 by default), so the
   output count equals ours. The loss is ours written in torch: smooth L1 on positive anchors,
   softmax CE with 3:1 hard negative mining per image (or the sigmoid focal loss), divided by the
   batch's positives; the targets are OUR encoded targets, read from `--targets` (written by
   detection_speed.py: classes int32 (n, A), boxes float32 (n, A, 4), raw little-endian), so
   matching is outside the step, as in our input pipeline. Pixels 0..255, scaled to [-1, 1] inside
   the model, as ours. Optimizer: ours (`--optimizer` JSON: the config's name, lr, momentum,
   rho, epsilon, and weight decay on conv weights only).

Both: NCHW float32 eager PyTorch in train mode (BatchNorm batch statistics), `--threads`
intra-op threads (and as many inter-op), `distinct` fixed batches cycled, like ours.
MAdds: `torch.utils.flop_counter.FlopCounterMode` over one batch-1 forward of the network
(backbone + extras + head; FLOPs / 2 = multiply-adds; it counts convolutions and matrix products,
as our `profile_model` counts conv and dense layers), in eval mode without gradients.

Protocol, one JSON object per line: on start the peer prints {"ready": {...}} (versions, threads,
each peer's description, params, MAdds, anchors, classes), or {"error": "..."} and exits 1.
Then for each request line {"time": "a", "steps": S, "warmup": W} it runs W untimed and S timed
steps and prints {"images_per_sec": ..., "seconds": ..., "loss": ...}; for {"profile": "b", ...}
it runs them under torch.profiler and prints {"step_ms": ..., "ops": [...]} (`profile_steps`). End of input or
{"quit": true} ends it. Anything else the libraries print goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from collections import OrderedDict
from functools import partial
from pathlib import Path

# The protocol owns stdout; whatever torch or a library writes to fd 1 lands on stderr instead.
_PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def send(obj: dict) -> None:
    _PROTOCOL.write(json.dumps(obj) + "\n")
    _PROTOCOL.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch SSDLite peers for detection_speed.py")
    p.add_argument("--peers", default="a,b", help="comma-separated: a, b (default: %(default)s)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--size", type=int, required=True, help="square input side in pixels")
    p.add_argument("--num-classes", type=int, required=True, help="object classes, without background")
    p.add_argument("--alpha", type=float, default=1.0, help="peer b's width multiplier")
    p.add_argument("--anchors-per-location", default="3,6,6,6,6,6", help="peer b, per map")
    p.add_argument("--loss", default="softmax", choices=["softmax", "focal"], help="peer b's loss")
    p.add_argument("--neg-pos-ratio", type=float, default=3.0, help="peer b's hard negative mining")
    p.add_argument("--optimizer", default='{"name": "rmsprop", "learning_rate": 0.004, '
                   '"momentum": 0.9, "rho": 0.9, "epsilon": 1.0, "weight_decay": 4e-5}',
                   help="peer b's optimizer as JSON (our config's train.optimizer + weight_decay)")
    p.add_argument("--targets", default=None,
                   help="peer b: a folder with classes.bin (int32 (n, A)) and boxes.bin "
                        "(float32 (n, A, 4)), n = distinct * batch; read at peer b's first run")
    p.add_argument("--distinct", type=int, default=4, help="fixed batches cycled over")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    bad = [s for s in args.peers if s not in ("a", "b")]
    if bad or not args.peers:
        p.error(f"--peers: expected a comma-separated list of a and b, got {bad or args.peers}")
    args.anchors_per_location = [int(v) for v in args.anchors_per_location.split(",")]
    args.optimizer = json.loads(args.optimizer)
    return args


# Networks ---------------------------------------------------------------------------------------

def norm_layer():
    import torch.nn as nn

    # torchvision's SSDLite norm layer (ssdlite320_mobilenet_v3_large's default); ours has the
    # same epsilon.
    return partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def build_peer_b(args):
    """Our SSDLite on torchvision's mobilenet_v2 (see the module docstring). Returns the module:
    (N, 3, H, W) pixels 0..255 -> {"bbox_regression": (N, A, 4), "cls_logits": (N, A, K + 1)}."""
    import torch
    import torch.nn as nn
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init

    norm = norm_layer()
    features = mobilenet_v2(weights=None, width_mult=args.alpha, norm_layer=norm).features
    # features[k + 1] is keras block_k (features[1] is block 0, "expanded_conv"); block_13 is the
    # stride-2 block whose 1x1 expansion + BN + ReLU6 (conv[0]) is keras block_13_expand_relu.
    c4 = 14
    if features[c4].use_res_connect:  # pragma: no cover - torchvision's layout changed
        raise RuntimeError("mobilenet_v2 features[14] is expected to be the stride-2 block 13")
    tap1 = features[c4].conv[0][0].out_channels
    tap2 = features[-1].out_channels
    depth = lambda d: max(16, int(d * args.alpha))  # noqa: E731 (the extras' depth rule)
    depths = [depth(d) for d in (512, 256, 256, 128)]

    class Backbone(nn.Module):
        """Pixels 0..255 -> OrderedDict of the six maps the head predicts on, finest first."""

        def __init__(self):
            super().__init__()
            self.to_c4 = nn.Sequential(*features[:c4], features[c4].conv[0])
            self.to_c5 = nn.Sequential(features[c4].conv[1:], *features[c4 + 1:])
            extra, channels = [], tap2
            for d in depths:
                extra.append(_extra_block(channels, d, norm))
                channels = d
            self.extra = nn.ModuleList(extra)
            _normal_init(self.extra)  # as torchvision's SSDLite initializes its extras

        def forward(self, x):
            x = x / 127.5 - 1.0  # ours: Rescaling(1 / 127.5, offset -1) inside the model
            maps = [self.to_c4(x)]
            maps.append(self.to_c5(maps[-1]))
            for block in self.extra:
                maps.append(block(maps[-1]))
            return OrderedDict((str(i), m) for i, m in enumerate(maps))

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            in_channels = [tap1, tap2, *depths]
            if len(args.anchors_per_location) != len(in_channels):
                raise ValueError(f"--anchors-per-location has {len(args.anchors_per_location)} "
                                 f"values; peer b has {len(in_channels)} maps")
            self.head = SSDLiteHead(in_channels, args.anchors_per_location, args.num_classes + 1,
                                    norm)

        def forward(self, x):
            return self.head(list(self.backbone(x).values()))

    torch.manual_seed(args.seed)
    return Detector()


def build_peer_a(args):
    """torchvision's ssdlite320_mobilenet_v3_large, randomly initialized, our class count."""
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(args.seed)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=args.num_classes + 1)
    if args.size != 320:  # --quick: run the peer at our size instead of resizing to 320
        model.transform.fixed_size = (args.size, args.size)
    return model


# Losses and optimizers --------------------------------------------------------------------------

def ssd_loss(out, box_t, cls_t, loss: str, neg_pos_ratio: float):
    """Ours (mobilevision.tasks.detection_loss.ssd_loss_terms) in torch: out {"bbox_regression":
    (N, A, 4), "cls_logits": (N, A, C)}, box_t (N, A, 4), cls_t (N, A) int (0 background, -1
    ignore) -> scalar (loc + cls) / max(1, positives in the batch)."""
    import torch
    import torch.nn.functional as F
    from torchvision.ops import sigmoid_focal_loss

    box_p, logits = out["bbox_regression"], out["cls_logits"]
    pos = cls_t > 0
    num_pos = pos.sum(1)
    loc = (F.smooth_l1_loss(box_p, box_t, reduction="none", beta=1.0).sum(-1) * pos).sum()
    n, a, c = logits.shape
    if loss == "softmax":
        ce = F.cross_entropy(logits.reshape(-1, c), cls_t.clamp(min=0).reshape(-1).long(),
                             reduction="none").view(n, a)
        negatives = cls_t == 0
        k = torch.minimum((num_pos * neg_pos_ratio).floor().long(), negatives.sum(1))
        scores = torch.where(negatives, ce.detach(), torch.full_like(ce, -1.0))
        rank = scores.argsort(1, descending=True).argsort(1)  # as ours: exactly k under ties
        keep = pos | (negatives & (rank < k[:, None]))
        cls = (ce * keep).sum()
    else:
        onehot = F.one_hot(cls_t.clamp(min=0).long(), c)[..., 1:].to(logits.dtype)
        focal = sigmoid_focal_loss(logits[..., 1:], onehot, alpha=0.25, gamma=2.0,
                                   reduction="none").sum(-1)
        cls = (focal * (cls_t >= 0)).sum()
    return (loc + cls) / num_pos.sum().clamp(min=1)


def split_decay(model):
    """(conv and linear weights, everything else: norm parameters and biases)."""
    import torch.nn as nn

    decay, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_kernel else rest).append(p)
    return decay, rest


def optimizer_b(model, spec: dict):
    """Our config's optimizer in torch, weight decay on kernels (as our L2 on kernels)."""
    import torch

    decay, rest = split_decay(model)
    wd = float(spec.get("weight_decay", 0.0))
    name, lr = spec["name"], float(spec["learning_rate"])
    groups = [{"params": decay, "weight_decay": 0.0 if name == "adamw" else wd},
              {"params": rest, "weight_decay": 0.0}]
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=spec.get("rho", 0.9),
                                   momentum=spec.get("momentum", 0.0), eps=spec.get("epsilon", 1e-7))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.get("momentum", 0.0), nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=spec.get("epsilon", 1e-7))
    if name == "adamw":
        groups[0]["weight_decay"] = wd
        return torch.optim.AdamW(groups, lr=lr, eps=spec.get("epsilon", 1e-7))
    raise ValueError(f"--optimizer: unknown name {name!r} (rmsprop, sgd, adam, adamw)")


def optimizer_a(model):
    """torchvision's reference recipe for ssdlite320 (references/detection/README.md): SGD lr
    0.15, momentum 0.9, weight decay 4e-5 and none on norm layers, with train_one_epoch's
    first-epoch linear warmup from lr / 1000 over 1000 steps."""
    import torch
    import torch.nn as nn

    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    norm, other = [], []
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        (norm if isinstance(module, norm_types) else other).extend(params)
    opt = torch.optim.SGD([{"params": other, "weight_decay": 4e-5},
                           {"params": norm, "weight_decay": 0.0}], lr=0.15, momentum=0.9)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / 1000, total_iters=1000)
    return opt, warmup


# Data -------------------------------------------------------------------------------------------

def random_boxes(rng: random.Random, size: int, num_classes: int, max_boxes: int = 4):
    """1..max_boxes random boxes as our benchmark draws them (side 10-60% of the image, aspect
    1/2..2, inside the image, labels 1..K) -> (boxes (g, 4) xyxy pixels float32, labels (g,))."""
    import torch

    boxes, labels = [], []
    for _ in range(rng.randint(1, max_boxes)):
        side = rng.uniform(0.1, 0.6)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        h, w = min(side * math.sqrt(aspect), 0.95), min(side / math.sqrt(aspect), 0.95)
        y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
        boxes.append([x0 * size, y0 * size, (x0 + w) * size, (y0 + h) * size])
        labels.append(rng.randint(1, num_classes))
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def batches_a(args):
    """`distinct` batches of (list of (3, s, s) images 0..1, list of {"boxes", "labels"})."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = []
    for _ in range(args.distinct):
        images = [torch.randint(0, 256, (3, args.size, args.size), generator=g).float() / 255
                  for _ in range(args.batch_size)]
        targets = []
        for _ in range(args.batch_size):
            boxes, labels = random_boxes(rng, args.size, args.num_classes)
            targets.append({"boxes": boxes, "labels": labels})
        out.append((images, targets))
    return out


def read_raw(path: Path, dtype, shape):
    import torch

    data = bytearray(path.read_bytes())
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, expected {expected} ({dtype} {tuple(shape)})")
    return torch.frombuffer(data, dtype=dtype).reshape(shape).clone()


def batches_b(args, num_anchors: int):
    """`distinct` batches of ((N, 3, s, s) pixels 0..255, box targets (N, A, 4), classes (N, A))
    with our encoded targets from --targets."""
    import torch

    if not args.targets:
        raise ValueError("peer b needs --targets (our encoded targets)")
    n = args.distinct * args.batch_size
    root = Path(args.targets)
    cls_t = read_raw(root / "classes.bin", torch.int32, (n, num_anchors)).long()
    box_t = read_raw(root / "boxes.bin", torch.float32, (n, num_anchors, 4))
    g = torch.Generator().manual_seed(args.seed)
    out = []
    for i in range(args.distinct):
        sl = slice(i * args.batch_size, (i + 1) * args.batch_size)
        x = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), generator=g).float()
        out.append((x, box_t[sl], cls_t[sl]))
    return out


# Peers ------------------------------------------------------------------------------------------

def count_madds(model, fn, x) -> int:
    """Multiply-adds of `fn(x)`, a forward through `model` or part of it (FlopCounterMode's
    FLOPs / 2), with `model` in eval mode and no gradients."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
    finally:
        model.train()
    return counter.get_total_flops() // 2


class PeerA:
    name = "a"

    def __init__(self, args):
        import torch

        self.args = args
        self.model = build_peer_a(args).train()
        self.opt, self.warmup = optimizer_a(self.model)
        self.data = None
        s = args.size
        x = torch.zeros(1, 3, s, s)
        self.model.eval()
        with torch.no_grad():
            feats = list(self.model.backbone(x).values())
        self.model.train()
        sizes = [tuple(f.shape[-2:]) for f in feats]
        per_loc = self.model.anchor_generator.num_anchors_per_location()
        self.info = {
            "description": "torchvision ssdlite320_mobilenet_v3_large (weights=None, "
                           "weights_backbone=None: reduced tail), SGD momentum 0.9 as the "
                           "reference recipe",
            "params": sum(p.numel() for p in self.model.parameters()),
            # the network: backbone + head, without the transform, anchors and matching
            "madds": count_madds(self.model, lambda t: self.model.head(
                list(self.model.backbone(t).values())), x),
            "num_classes": args.num_classes + 1,
            "num_anchors": sum(h * w * n for (h, w), n in zip(sizes, per_loc)),
            "anchors_per_location": per_loc, "map_sizes": sizes,
            "matching_in_step": True,
        }

    def step(self, i):
        if self.data is None:
            self.data = batches_a(self.args)
        images, targets = self.data[i % len(self.data)]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.warmup.step()
        return float(loss.detach())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class PeerB:
    name = "b"
    record_function = None  # torch.profiler.record_function while profile_steps runs

    def __init__(self, args):
        import torch

        self.args = args
        self.model = build_peer_b(args).train()
        self.opt = optimizer_b(self.model, args.optimizer)
        self.data = None
        x = torch.zeros(1, 3, args.size, args.size)
        self.model.eval()
        with torch.no_grad():
            feats = list(self.model.backbone(x).values())
            out = self.model.head(feats)
        self.model.train()
        self.num_anchors = int(out["bbox_regression"].shape[1])
        self.info = {
            "description": "our network from torchvision parts: mobilenet_v2 features tapped at "
                           "block 13's expansion and out_relu, SSDLite extras and SSDLiteHead, "
                           "our loss on our encoded targets, our optimizer",
            "params": sum(p.numel() for p in self.model.parameters()),
            "madds": count_madds(self.model, self.model, x),
            "num_classes": args.num_classes + 1,
            "num_anchors": self.num_anchors,
            "anchors_per_location": args.anchors_per_location,
            "map_sizes": [tuple(f.shape[-2:]) for f in feats],
            "map_channels": [int(f.shape[1]) for f in feats],
            "optimizer": args.optimizer, "loss": args.loss,
            "matching_in_step": False,
        }

    def step(self, i):
        if self.data is None:
            self.data = batches_b(self.args, self.num_anchors)
        x, box_t, cls_t = self.data[i % len(self.data)]
        out = self.model(x)
        with (self.record_function("peer_loss") if self.record_function else _nothing()):
            loss = ssd_loss(out, box_t, cls_t, self.args.loss, self.args.neg_pos_ratio)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def time_steps(peer, steps: int, warmup: int, start: int) -> dict:
    """`warmup` untimed then `steps` timed train steps, batches cycled from index `start`.
    Each step ends with the loss read as a Python float, so its work is done."""
    i = start
    for _ in range(warmup):
        peer.step(i)
        i += 1
    t = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = peer.step(i)
        i += 1
    seconds = time.perf_counter() - t
    return {"images_per_sec": steps * peer.args.batch_size / seconds, "seconds": seconds,
            "loss": loss, "finite": loss is not None and math.isfinite(loss), "next": i}


def _conv_kind(shapes) -> str:
    """'depthwise' or 'conv' for a convolution event from its recorded input shapes: the weight
    (out, in / groups, kh, kw) of a depthwise conv has one input channel per group while the
    activation has many."""
    dims = [s for s in shapes if isinstance(s, (list, tuple)) and len(s) == 4]
    weights = [s for s in dims if s[1] == 1 and s[2] == s[3] and s[2] > 1]
    return "depthwise" if weights and any(d[1] > 1 for d in dims) else "conv"


def profile_steps(peer, steps: int, warmup: int, start: int) -> dict:
    """`warmup` untimed steps, then `steps` under torch.profiler (CPU, input shapes recorded).
    Returns {"step_ms": wall ms per step under the profiler, "ops": [{"name", "kind",
    "self_ms", "calls", "scope"}]}: every op's self (exclusive) CPU time per step, summed by op
    name, convolution kind (depthwise or not, from the weight's shape) and scope ("optimizer"
    inside Optimizer.step, "loss" inside the loss, else "network"), over all threads (the
    autograd engine's backward ops included)."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile, record_function

    i = start
    for _ in range(warmup):
        peer.step(i)
        i += 1
    peer.record_function = record_function
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            peer.step(i)
            i += 1
        seconds = time.perf_counter() - t
    peer.record_function = None
    totals = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        name = event.name
        if not (name.startswith("aten::") or name.startswith("mkldnn::")):
            continue
        scope, parent = "network", event.cpu_parent
        while parent is not None:
            if parent.name.startswith("Optimizer.step"):
                scope = "optimizer"
                break
            if parent.name == "peer_loss":
                scope = "loss"
                break
            parent = parent.cpu_parent
        kind = _conv_kind(event.input_shapes or []) if "conv" in name else ""
        key = (name, kind, scope)
        totals[key][0] += event.self_cpu_time_total / 1000.0
        totals[key][1] += 1
    ops = [{"name": n, "kind": k, "scope": sc, "self_ms": ms / steps, "calls": c / steps}
           for (n, k, sc), (ms, c) in totals.items()]
    ops.sort(key=lambda o: -o["self_ms"])
    return {"step_ms": 1000 * seconds / steps, "ops": ops, "next": i}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        import torch
        import torchvision

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
        peers = {}
        for name in args.peers:
            peers[name] = (PeerA if name == "a" else PeerB)(args)
        send({"ready": {
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": sys.version.split()[0], "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            # the vector ISA of PyTorch's own kernels (ATEN_CPU_CAPABILITY limits it) and its
            # oneDNN's limit (ONEDNN_MAX_CPU_ISA, shared with TensorFlow's)
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "batch_size": args.batch_size, "size": args.size,
            "peers": {name: p.info for name, p in peers.items()}}})
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which names the peer
        traceback.print_exc()
        send({"error": f"{type(e).__name__}: {e}"})
        return 1
    position = {name: 0 for name in peers}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("quit"):
                break
            name = request.get("time") or request["profile"]
            if name not in peers:
                raise ValueError(f"peer {name!r} was not built (--peers {','.join(peers)})")
            run = time_steps if "time" in request else profile_steps
            result = run(peers[name], int(request["steps"]), int(request["warmup"]),
                         position[name])
            position[name] = result.pop("next")
            send(result)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            send({"error": f"{type(e).__name__}: {e}"})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
