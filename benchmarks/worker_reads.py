#!/usr/bin/env python
"""How many training images each of two `multi_worker` workers opens in one epoch.

    python benchmarks/worker_reads.py                     # shapes_ssdlite.yaml, 480 JPEGs
    python benchmarks/worker_reads.py --config shapes_classifier.yaml --size 64
    python benchmarks/worker_reads.py --repo OTHER_CHECKOUT   # its code, to compare

Writes the config's synthetic shapes (--images training images at --size px), then trains one
epoch (images / batch steps) with `distribute.strategy=multi_worker` as two worker processes on
127.0.0.1, each under `strace -f -e trace=openat`, and counts the training images each opened.
The reader's own checks (COCO and VOC read every file's header when they parse a split, in
every worker) happen before the dataset is built; opens after the worker prints that its
dataset is built (`input pipeline i of N`) are the training pipeline's. A checkout without that
line (the DATA auto-shard policy, before issue 14) has all its opens counted.

Target (issue 14): each worker opens at most 0.6 of the training images in an epoch. A worker
reads a little of the next epoch ahead (tf.data prefetch) before training ends; `first pass`
counts the images of its first pass over its share alone.

Writes the figures as JSON (--json-out, default benchmarks/results/worker_reads.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_description, run_benchmark, utc_timestamp, versions  # noqa: E402

TARGET = 0.6
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "worker_reads.json"
REPO = Path(__file__).resolve().parents[1]
MARKER = "input pipeline "
# strace -f lines: `PID openat(AT_FDCWD, "path", ...) = FD`, or split in two when another thread
# runs in between: `PID openat(..., "path", ... <unfinished ...>` then `PID <... openat resumed>
# ...) = FD`. A failed open ends in `= -1 ENOENT ...`.
OPEN = re.compile(r'^(\d+)\s+openat\([^"]*"([^"]+)"')
RESUMED = re.compile(r'^(\d+)\s+<\.\.\. openat resumed>')
RESULT = re.compile(r'\)\s+=\s+(-?\d+)')
WRITE = re.compile(r'^(\d+)\s+write\(1, "' + re.escape(MARKER))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def training_files(cfg) -> list[str]:
    """The training split's image files, as the config's data source lists them."""
    from mobilevision.data.sources import source_for

    source, split = source_for(cfg), cfg.data.train_split
    return [str(source.path(split, i)) for i in range(source.size(split))]


def count_opens(trace: Path, files: set[str]) -> dict:
    """From one worker's strace log: the training images it opened before its dataset was built
    (the reader's checks) and after (the pipeline), in order."""
    before, after, marked, pending = [], [], False, {}
    for line in trace.read_text(errors="replace").splitlines():
        if WRITE.match(line):
            marked = True
            continue
        opened, resumed = OPEN.match(line), RESUMED.match(line)
        if opened:
            pid, path = opened.groups()
        elif resumed and resumed.group(1) in pending:
            pid, path = resumed.group(1), pending.pop(resumed.group(1))
        else:
            continue
        if line.endswith("<unfinished ...>"):
            pending[pid] = path
            continue
        result = RESULT.search(line)
        path = os.path.normpath(path)
        if result and int(result.group(1)) >= 0 and path in files:
            (after if marked else before).append(path)
    if not marked:  # a checkout that does not print the marker: every open counts
        before, after = [], before
    return {"marked": marked, "before": before, "after": after}


def run(args) -> dict:
    import mobilevision as mv
    from mobilevision.data.shapes import prepare_data

    if shutil.which("strace") is None:
        raise SystemExit("worker_reads.py: needs strace (apt-get install strace); the tests count "
                         "opened files with inotify instead (tests/conftest.py OpenedFiles)")
    work = Path(tempfile.mkdtemp(prefix="worker_reads_"))
    try:
        data = work / "data"
        shapes = {"data.synthetic": "shapes", "data.root": str(data),
                  "data.shapes.num_train": args.images, "data.shapes.num_val": 16,
                  "data.shapes.image_size": args.size,
                  "model.input_size": f"[{args.size},{args.size}]",
                  "train.batch_size": args.batch_size, "train.epochs": 1,
                  "train.eval_every": 1000, "train.verbose": 2}
        overrides = [f"{k}={v}" for k, v in shapes.items()] + list(args.overrides)
        cfg = mv.load_config(args.config, overrides)
        prepare_data(cfg)  # written once here, not by both workers at once
        files = [os.path.normpath(f) for f in training_files(cfg)]
        n = len(files)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
        procs = {}
        for i in (0, 1):
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(args.repo),
                   "TF_CONFIG": json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": i}})}
            command = ["strace", "-f", "-qq", "-s", "64", "-e", "trace=openat,write",
                       "-o", str(work / f"trace{i}"), sys.executable,
                       str(Path(args.repo) / "scripts" / "train.py"), "--config", args.config,
                       "--output", str(work / f"run{i}"), *overrides,
                       "distribute.strategy=multi_worker"]
            procs[i] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        workers = {}
        try:
            for i, proc in procs.items():
                out, _ = proc.communicate(timeout=args.timeout)
                if proc.returncode:
                    raise SystemExit(f"worker {i} failed:\n{out[-3000:]}")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
        share, firsts = n // 2, []
        for i in (0, 1):
            opens = count_opens(work / f"trace{i}", set(files))
            after = opens["after"]
            first = list(dict.fromkeys(after))[:share]
            firsts.append(set(first))
            workers[i] = {"opened": len(set(after)), "opened_fraction": len(set(after)) / n,
                          "first_pass": len(first), "opens": len(after),
                          "checked_before_training": len(set(opens["before"])),
                          "marker_seen": opens["marked"]}
        return {"benchmark": "worker_reads", "time": utc_timestamp(), "config": args.config,
                "repo": str(args.repo), "training_images": n, "size": args.size,
                "global_batch": args.batch_size, "steps": n // args.batch_size,
                "overrides": list(args.overrides), "device": device_description(),
                "versions": versions(), "workers": workers,
                "first_passes_overlap": len(firsts[0] & firsts[1]), "target": TARGET,
                "ok": all(w["opened_fraction"] <= TARGET for w in workers.values())}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_table(r: dict) -> str:
    n = r["training_images"]
    lines = [f"  {r['config']}: {n} training images, global batch {r['global_batch']}, "
             f"{r['steps']} steps (one epoch), two workers on 127.0.0.1",
             f"  {'':10s}{'opened':>8s}{'of ' + str(n):>9s}{'first pass':>12s}{'opens':>8s}"
             f"{'checked before':>16s}"]
    for i, w in r["workers"].items():
        lines.append(f"  worker {i}  {w['opened']:8d}{w['opened_fraction']:9.2f}"
                     f"{w['first_pass']:12d}{w['opens']:8d}{w['checked_before_training']:16d}")
    lines.append(f"  first passes shared by both workers: {r['first_passes_overlap']}")
    verdict = "OK" if r["ok"] else "MISSED"
    lines.append(f"  target: each worker opens <= {r['target']:.1f} of the images: {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="worker_reads.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="shapes_ssdlite.yaml")
    parser.add_argument("--images", type=int, default=480, help="training images (default 480)")
    parser.add_argument("--size", type=int, default=96, help="image and input side, px")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (default 16)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose scripts/train.py and package the workers run")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per worker")
    parser.add_argument("--json-out", default=str(DEFAULT_JSON))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    for name in ("images", "size", "batch_size"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    return run_benchmark(parser.prog, args, run, format_table)


if __name__ == "__main__":
    sys.exit(main())
