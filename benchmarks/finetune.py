"""Fine-tuning measured: a shapes detector fine-tuned on a 3-class subset against the same run
from scratch, at equal epochs (issue 21).

1. Source: SSDLite trained from scratch on the 5-class shapes data (circle, square, triangle,
   star, hexagon; `configs/shapes_ssdlite.yaml` with a smaller schedule, see the options), or
   an existing run folder given with --source.
2. Target: *another* shapes dataset (another seed, so every image is new), rewritten as a
   3-class COCO dataset: the categories circle, square and triangle and their annotations only.
   The stars and hexagons stay in the pixels as unlabelled background (their annotations are
   dropped, not their shapes), so the target detector must learn to ignore them, and an image
   whose objects were all stars and hexagons stays in as a negative. The image folders are
   symlinks to the generated ones (the same files); the val split is made the same way.
3. The target is trained for the same epochs with the same recipe and seed three ways: from
   scratch, fine-tuned (`model.weights=<source run> model.num_classes=3`: every layer whose
   shape fits loads, the class predictors start fresh), and fine-tuned with the backbone frozen
   for the first epoch(s) (`train.freeze_backbone_epochs`; --freeze-epochs 0 skips that run).

Each run is `scripts/train.py` in a fresh process (wall time includes interpreter start, imports
and the evaluations), with `train.eval_every=1`; its metrics.csv gives val AP50 and AP per epoch.
The table shows them side by side, then the final figures (the last epoch's, which is the
equal-epochs comparison, and eval.json's, the best checkpoint's), each run's wall time and the
fine-tuned run's loaded/fresh listing. The JSON (`benchmarks/results/finetune.json` unless
--json-out) adds the setup, the machine, the load average and the share of the CPUs other
processes used during each run (AP does not depend on the load; times do).

    python benchmarks/finetune.py                          # about 25 minutes on 2 idle cores
    python benchmarks/finetune.py --source runs/shapes_ssdlite --keep /tmp/ft
    python benchmarks/finetune.py --epochs 6 train.optimizer.learning_rate=0.004   # every run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    cpu_sample, machine, machine_line, others_share, utc_timestamp, write_json)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "shapes_ssdlite.yaml"
SUBSET = ("circle", "square", "triangle")


# Data -------------------------------------------------------------------------------------------


def shapes_params(num_train: int, num_val: int, size: int, seed: int) -> dict:
    """`ensure_shapes` parameters of the demo's detection data (its texture contrast and smallest
    object from configs/shapes_ssdlite.yaml) at another size, count and seed."""
    from mobilevision.config import load_config

    shapes = load_config(CONFIG).data.shapes
    return {"num_train": num_train, "num_val": num_val, "image_size": size, "seed": seed,
            "texture_contrast": shapes.texture_contrast, "min_size_frac": shapes.min_size_frac}


def make_subset(full_root: Path, subset_root: Path, keep=SUBSET) -> dict:
    """Write `subset_root` as a COCO dataset of the shapes dataset at `full_root` restricted to the
    categories named in `keep`: their categories (ids unchanged) and annotations, every image
    (those left with no annotation are negatives), and {train,val}/images symlinked to the full
    dataset's folders. Returns {split: {"images", "objects", "dropped"}}."""
    summary = {}
    (subset_root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        coco = json.loads((full_root / "annotations" / f"instances_{split}.json").read_text())
        names = {c["name"] for c in coco["categories"]}
        if not set(keep) <= names:
            raise ValueError(f"{full_root}: no categories {sorted(set(keep) - names)}")
        categories = [c for c in coco["categories"] if c["name"] in keep]
        ids = {c["id"] for c in categories}
        annotations = [a for a in coco["annotations"] if a["category_id"] in ids]
        out = {**coco, "categories": categories, "annotations": annotations,
               "info": {**coco.get("info", {}), "description":
                        f"{coco.get('info', {}).get('description', 'shapes')}: {', '.join(keep)} "
                        f"only (the other shapes are unlabelled background)"}}
        (subset_root / "annotations" / f"instances_{split}.json").write_text(json.dumps(out))
        link = subset_root / split / "images"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((full_root / split / "images").resolve(), target_is_directory=True)
        summary[split] = {"images": len(coco["images"]), "objects": len(annotations),
                          "dropped": len(coco["annotations"]) - len(annotations)}
    return summary


# Runs -------------------------------------------------------------------------------------------


def val_curve(run_dir: Path) -> list[dict]:
    """[{"epoch", "AP50", "AP", "epoch_seconds"}] for the epochs of metrics.csv with val_AP50."""
    path = run_dir / "metrics.csv"
    curve = []
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val_AP50", "") not in ("", "nan"):
                    curve.append({"epoch": int(row["epoch"]),
                                  "AP50": round(float(row["val_AP50"]), 4),
                                  "AP": round(float(row["val_AP"]), 4),
                                  "epoch_seconds": round(float(row.get("epoch_seconds") or 0), 1)})
    return curve


def weights_listing(log_text: str) -> list[str]:
    """The trainer's console listing of loaded and fresh layers (`LoadReport.describe()`): the
    line starting 'loaded N of M weighted layers' and the indented lines after it."""
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("loaded ") and "weighted layers" in line:
            block = [line]
            for following in lines[i + 1:]:
                if not following.startswith("  "):
                    break
                block.append(following)
            return block
    return []


def train_run(name: str, overrides: list[str], run_dir: Path, timeout: float, log) -> dict:
    """`scripts/train.py --config shapes_ssdlite.yaml --output run_dir overrides...` in a fresh
    process; -> its figures: per-epoch curve, eval.json's AP50 and AP, wall seconds, load."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", CONFIG,
           "--output", str(run_dir), "train.verbose=2", *overrides]
    log(f"{name}: training in {run_dir} ...")
    log_path = run_dir.parent / f"{run_dir.name}.log"
    load_before, cpu_start = os.getloadavg(), cpu_sample()
    t0 = time.perf_counter()
    with log_path.open("w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - t0
    others = others_share(cpu_start, cpu_sample())  # the run has ended: it counts as ours
    others = None if others is None else round(others, 3)
    text = log_path.read_text(errors="replace")
    result = {"name": name, "folder": str(run_dir), "overrides": overrides, "returncode": rc,
              "seconds": round(seconds, 1), "curve": val_curve(run_dir),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "others_cpu_share": others, "eval": None}
    eval_path = run_dir / "eval.json"
    if rc == 0 and eval_path.exists():
        e = json.loads(eval_path.read_text())
        result["eval"] = {k: round(float(e[k]), 4) for k in ("AP50", "AP")}
        result["per_class_AP50"] = {k: round(float(v), 4)
                                    for k, v in e.get("per_class_AP50", {}).items()}
    else:
        result["log_tail"] = text[-3000:]
        log(f"{name}: FAILED (exit {rc}); log: {log_path}")
    weights_json = run_dir / "weights.json"
    if weights_json.exists():
        w = json.loads(weights_json.read_text())
        result["weights"] = {"summary": w.get("summary"), "counts": w.get("counts"),
                             "listing": weights_listing(text)}
    if result["curve"]:
        last = result["curve"][-1]
        log(f"{name}: done in {seconds / 60:.1f} min, epoch {last['epoch']} val AP50 "
            f"{last['AP50']:.3f} AP {last['AP']:.3f}")
    return result


# Report -----------------------------------------------------------------------------------------


def _fmt(value, fmt=".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict) -> str:
    runs = result["runs"]
    m, src = result["machine"], result["source"]
    lines = [f"  {machine_line(m)} at start, {result['loadavg_end'][0]:.2f} at end"]
    src_last = src["curve"][-1] if src.get("curve") else {}
    lines.append(f"  source: {src['folder']}: 5 classes, val AP50 {_fmt(src_last.get('AP50'))} "
                 f"AP {_fmt(src_last.get('AP'))} (last epoch)"
                 + (f", {src['seconds'] / 60:.1f} min" if src.get("seconds") else ""))
    sub = result["subset"]["splits"]
    lines.append(f"  target: {', '.join(SUBSET)} (seed {result['setup']['subset_seed']}): "
                 f"{sub['train']['images']} train / {sub['val']['images']} val images, "
                 f"{sub['train']['objects']} / {sub['val']['objects']} labelled objects "
                 f"({sub['train']['dropped']} / {sub['val']['dropped']} stars and hexagons left "
                 f"unlabelled)")
    width = 14
    head = "".join(f"{r['name']:>{width}s}" for r in runs)
    lines += ["", "  val AP50 (AP) per epoch", f"  {'epoch':>5s}{head}"]
    epochs = max((len(r["curve"]) for r in runs), default=0)
    for i in range(epochs):
        cells = []
        for r in runs:
            c = r["curve"][i] if i < len(r["curve"]) else None
            text = "-" if c is None else f"{c['AP50']:.3f} ({c['AP']:.3f})"
            cells.append(f"{text:>{width}s}")
        lines.append(f"  {i + 1:>5d}{''.join(cells)}")
    lines.append("")
    lines.append(f"  {'':24s}{head}")

    def row(label, values):
        lines.append(f"  {label:24s}" + "".join(f"{v:>{width}s}" for v in values))

    row("AP50, last epoch", [_fmt(r["curve"][-1]["AP50"] if r["curve"] else None) for r in runs])
    row("AP, last epoch", [_fmt(r["curve"][-1]["AP"] if r["curve"] else None) for r in runs])
    row("AP50, best (eval.json)", [_fmt((r["eval"] or {}).get("AP50")) for r in runs])
    row("AP, best (eval.json)", [_fmt((r["eval"] or {}).get("AP")) for r in runs])
    row("wall minutes", [f"{r['seconds'] / 60:.1f}" for r in runs])
    row("others' CPU share", [_fmt(r["others_cpu_share"], ".2f") for r in runs])
    tuned = next((r for r in runs if r.get("weights")), None)
    if tuned:
        lines += ["", f"  {tuned['name']}: " + (tuned["weights"]["summary"] or "")]
        lines += [f"  {line}" for line in tuned["weights"]["listing"][1:]]
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------


def run(args, base: Path, log) -> dict:
    common = [f"model.input_size=[{args.size},{args.size}]", f"model.backbone.alpha={args.alpha}",
              f"train.batch_size={args.batch_size}", f"seed={args.seed}", "train.eval_every=1",
              *args.overrides]
    setup = {"config": CONFIG, "size": args.size, "alpha": args.alpha,
             "batch_size": args.batch_size, "seed": args.seed, "epochs": args.epochs,
             "source_train": args.source_train, "source_val": args.source_val,
             "source_epochs": args.source_epochs, "source_seed": args.source_seed,
             "subset_train": args.subset_train, "subset_val": args.subset_val,
             "subset_seed": args.subset_seed, "freeze_epochs": args.freeze_epochs,
             "overrides": args.overrides}
    result = {"timestamp": utc_timestamp(), "machine": machine(),
              "loadavg_start": [round(x, 2) for x in os.getloadavg()], "setup": setup}
    from mobilevision.data.shapes import ensure_shapes

    if args.source:
        src_dir = Path(args.source).resolve()
        result["source"] = {"name": "source", "folder": str(src_dir), "curve": val_curve(src_dir),
                            "given": True}
    else:
        params = shapes_params(args.source_train, args.source_val, args.size, args.source_seed)
        src = train_run("source", [*common, f"data.root={base / 'shapes5'}",
                                   *(f"data.shapes.{k}={v}" for k, v in params.items()),
                                   f"train.epochs={args.source_epochs}"],
                        base / "runs" / "source", args.timeout, log)
        result["source"] = src
        if src["returncode"] != 0:
            return result
        src_dir = Path(src["folder"])

    log(f"target data: shapes seed {args.subset_seed}, {', '.join(SUBSET)} only ...")
    full = ensure_shapes(base / "shapes5_target", "detection",
                         **shapes_params(args.subset_train, args.subset_val, args.size,
                                         args.subset_seed))
    result["subset"] = {"root": str(base / "shapes3"), "splits": make_subset(full, base / "shapes3")}
    target = [*common, "data.synthetic=null", f"data.root={base / 'shapes3'}",
              f"model.num_classes={len(SUBSET)}", f"train.epochs={args.epochs}"]
    plans = [("scratch", target), ("fine-tuned", [*target, f"model.weights={src_dir}"])]
    if args.freeze_epochs:
        plans.append((f"frozen {args.freeze_epochs} ep", [*target, f"model.weights={src_dir}",
                                                           f"train.freeze_backbone_epochs={args.freeze_epochs}"]))
    result["runs"] = []
    for name, overrides in plans:
        folder = base / "runs" / name.replace(" ", "_")
        result["runs"].append(train_run(name, overrides, folder, args.timeout, log))
        if args.json_out != "-":  # after every run: an interrupted series keeps them
            write_json(args.json_out, result)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="finetune.py", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every run (source included)")
    p.add_argument("--source", metavar="RUN", help="an existing 5-class shapes detector run folder "
                   "(its input size and alpha must be --size and --alpha); default: train one")
    p.add_argument("--size", type=int, default=128, help="image and input size (default 128)")
    p.add_argument("--alpha", type=float, default=0.35, help="backbone width (default 0.35)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="training seed of every run")
    p.add_argument("--source-train", type=int, default=2000, help="source train images")
    p.add_argument("--source-val", type=int, default=200, help="source val images")
    p.add_argument("--source-epochs", type=int, default=12)
    p.add_argument("--source-seed", type=int, default=0, help="shapes seed of the source data")
    p.add_argument("--subset-train", type=int, default=500,
                   help="target train images (before dropping star and hexagon labels)")
    p.add_argument("--subset-val", type=int, default=200)
    p.add_argument("--subset-seed", type=int, default=1, help="shapes seed of the target data")
    p.add_argument("--epochs", type=int, default=4, help="epochs of every target run")
    p.add_argument("--freeze-epochs", type=int, default=1, help="the third run's "
                   "train.freeze_backbone_epochs (0: no third run)")
    p.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "finetune.json"))
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (data, runs, logs); "
                   "default: a temporary folder, removed afterwards")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is stopped")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    for key in ("size", "batch_size", "source_train", "source_val", "source_epochs",
                "subset_train", "subset_val", "epochs"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    if args.freeze_epochs < 0 or args.freeze_epochs >= args.epochs:
        p.error("--freeze-epochs must be >= 0 and less than --epochs")
    if args.source and not (Path(args.source) / "config.yaml").is_file():
        p.error(f"--source {args.source}: not a run folder (no config.yaml)")

    out = sys.stderr if args.json_out == "-" else sys.stdout
    t0 = time.perf_counter()

    def log(message):
        print(f"  [{time.perf_counter() - t0:5.0f} s] {message}", file=out, flush=True)

    base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="mobilevision_finetune_"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, base, log)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    ok = "runs" in result and all(r["returncode"] == 0 for r in result["runs"])
    if ok:
        print(format_table(result), file=out, flush=True)
    write_json(args.json_out, result)
    if args.json_out != "-":
        print(f"  wrote {args.json_out} ({result['seconds'] / 60:.0f} min)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
