"""benchmarks/torch_peer.py, the PyTorch peers of benchmarks/detection_speed.py, driven by the
benchmark's own client: peer b is our detector's network (the same trainable parameters, MAdds,
anchors and logits per anchor) and trains on our encoded targets; a Python without torch gives a
clear error. torch is never a dependency of the toolkit, so the peer test needs a Python with
torch and torchvision in MOBILEVISION_PEER_PYTHON and is skipped without one."""

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import mobilevision as mv

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = os.environ.get("MOBILEVISION_PEER_PYTHON")


def _benchmark():
    spec = importlib.util.spec_from_file_location("detection_speed",
                                                  ROOT / "benchmarks" / "detection_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(size=128):
    return mv.load_config("coco_ssdlite.yaml", ["model.backbone.alpha=0.35",
                                                "model.backbone.weights=null",
                                                f"model.input_size=[{size},{size}]",
                                                "train.batch_size=2"])


@pytest.mark.skipif(not PEER_PYTHON, reason="the PyTorch peer needs a Python with torch and "
                    "torchvision: set MOBILEVISION_PEER_PYTHON (see benchmarks/README.md)")
def test_peer_b_is_our_network_and_trains_on_our_targets(tmp_path):
    from mobilevision.profile import profile_model

    bench = _benchmark()
    cfg = _config()
    model = mv.build_model(cfg)
    anchors = model.decoder.anchors
    per_location = bench.anchors_per_location(cfg, model)
    assert per_location == [3, 6, 6, 6, 6, 6]
    _, _, _, targets = bench.random_batches(anchors, 2, 128, cfg.model.num_classes, seed=0)
    args = SimpleNamespace(peer_python=PEER_PYTHON, batch_size=2, size=128, threads=1)
    peer = bench.start_peer(args, cfg, per_location, targets, tmp_path, ["b"])
    try:
        b = peer.ready()["peers"]["b"]
        assert b["num_anchors"] == len(anchors) == 330  # 8x8x3 + 4x4x6 + 2x2x6 + 3 x 1x1x6
        assert b["anchors_per_location"] == per_location
        assert b["num_classes"] == cfg.model.num_classes + 1
        assert b["params"] == sum(math.prod(w.shape) for w in model.trainable_weights)
        assert b["madds"] == profile_model(model)["madds"]
        result = peer.time("b", steps=1, warmup=0)
        assert result["finite"] and result["images_per_sec"] > 0
    finally:
        peer.close()
    assert peer.proc.returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="this Python has torch, so it would run the peer")
def test_a_python_without_torch_is_a_clear_error(tmp_path):
    bench = _benchmark()
    cfg = _config()
    per_location = [3, 6, 6, 6, 6, 6]  # no model needed to fail
    targets = (np.zeros((8, 10, 4), np.float32), np.zeros((8, 10), np.int32))
    args = SimpleNamespace(peer_python=sys.executable, batch_size=2, size=128, threads=1)
    with pytest.raises(bench.BenchmarkError, match="(?s)No module named 'torch'.*--peer-python"):
        bench.start_peer(args, cfg, per_location, targets, tmp_path, ["a", "b"])
