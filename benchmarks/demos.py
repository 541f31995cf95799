"""The demos, measured as a new user meets them: each shapes config trained from nothing.

For every demo it makes an empty folder, runs `scripts/train.py --config <demo>` there in a fresh
process (so the wall time includes interpreter start, imports, generating the shapes data,
training, the evaluations during training and the final evaluation of the best checkpoint), then
reads the run's `eval.json`, `metrics.csv` and `startup.json` and checks the demo's bar: its metric at least the
target, within its time (5 or 10 minutes). The table gives each demo's metric, wall time, seconds from the command to its first train step
(by phase, from the trainer's `startup.json`) and verdict; the JSON
(`benchmarks/results/demos.json` unless --json-out) adds the per-epoch validation curve, the data
generation time, and the setup.

    python benchmarks/demos.py                          # every demo (about 35 minutes on 2 cores)
    python benchmarks/demos.py shapes_ssdlite.yaml      # one
    python benchmarks/demos.py shapes_ssdlite.yaml train.epochs=10   # overrides go to every demo

Run it on an otherwise idle machine: the bars are wall-clock bars.
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

from common import utc_timestamp, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# config -> (metric in eval.json, at least, wall seconds at most): issue 13's bars (before it:
# top1 0.9, AP50 0.7, mIoU 0.75, each in 15 minutes).
DEMOS = {
    "shapes_classifier.yaml": ("top1", 0.95, 300),
    "shapes_ssdlite.yaml": ("AP50", 0.85, 600),
    "shapes_deeplabv3.yaml": ("mIoU", 0.80, 600),
}


def val_curve(run_dir: Path, metric: str) -> list[dict]:
    """[{"epoch": e, metric: value}] for the epochs of metrics.csv that have val_<metric>."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    curve = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(f"val_{metric}", "")
            if value not in ("", "nan"):
                curve.append({"epoch": int(row["epoch"]), metric: round(float(value), 4)})
    return curve


def run_demo(config: str, overrides: list[str], workdir: Path, timeout: float) -> dict:
    """Train `config` from nothing in `workdir`; -> the demo's figures (see the module doc)."""
    metric, target, max_seconds = DEMOS[config]
    run_dir, data_dir = workdir / "run", workdir / "data"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", config,
           "--output", str(run_dir), f"data.root={data_dir}", "train.verbose=2", *overrides]
    t0 = time.perf_counter()
    log = workdir / "train.log"
    with log.open("w") as f:
        try:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=workdir)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - t0
    result = {"config": config, "overrides": overrides, "metric": metric, "target": target,
              "max_seconds": max_seconds, "seconds": round(seconds, 1), "returncode": rc,
              "value": None, "curve": val_curve(run_dir, metric)}
    manifest = data_dir / "shapes.json"
    if manifest.exists():
        result["data"] = json.loads(manifest.read_text()).get("params")
    startup = run_dir / "startup.json"
    if startup.exists():  # the trainer's split of the time from the command to the first step
        result["startup"] = json.loads(startup.read_text())
    eval_path = run_dir / "eval.json"
    if rc == 0 and eval_path.exists():
        result["value"] = round(float(json.loads(eval_path.read_text())[metric]), 4)
    else:
        result["log_tail"] = log.read_text()[-3000:]
    result["passed"] = (result["value"] is not None and result["value"] >= target
                        and seconds <= max_seconds)
    return result


def format_table(results: list[dict]) -> str:
    lines = [f"  {'demo':26s}{'metric':>8s}{'value':>8s}{'bar':>7s}{'minutes':>9s}"
             f"{'1st step':>10s}   verdict"]
    for r in results:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        first = r.get("startup", {}).get("seconds_to_first_step")
        first = "-" if first is None else f"{first:.0f} s"
        if r["passed"]:
            verdict = "OK"
        elif r["value"] is None:
            verdict = f"FAILED (exit {r['returncode']})"
        else:
            verdict = "BELOW BAR" if r["value"] < r["target"] else "OVER TIME"
        lines.append(f"  {r['config']:26s}{r['metric']:>8s}{value:>8s}{r['target']:>7.2f}"
                     f"{r['seconds'] / 60:>9.1f}{first:>10s}   {verdict} (bar: >= {r['target']} in "
                     f"<= {r['max_seconds'] / 60:.0f} min)")
    for r in results:  # where the time to the first step went, demo by demo
        phases = r.get("startup", {}).get("phases")
        if phases:
            lines.append(f"    {r['config']}: " + ", ".join(f"{k} {v:.1f} s"
                                                           for k, v in phases.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demos.py", description=__doc__.split("\n\n")[0])
    p.add_argument("items", nargs="*", metavar="CONFIG | key=value",
                   help=f"demos to run (default: all of {', '.join(DEMOS)}) and overrides")
    p.add_argument("--json-out", default=str(ROOT / "benchmarks" / "results" / "demos.json"))
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary "
                   "folder, removed afterwards)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a demo is stopped")
    args = p.parse_args(argv)
    configs = [c for c in args.items if "=" not in c]
    overrides = [c for c in args.items if "=" in c]
    for c in configs:
        if c not in DEMOS:
            p.error(f"unknown demo {c!r}; the demos are {', '.join(DEMOS)}")
    configs = configs or list(DEMOS)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mobilevision_demos_"))
    results = []
    try:
        for config in configs:
            workdir = base / Path(config).stem
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
            print(f"  {config}: training from nothing in {workdir} ...", flush=True)
            results.append(run_demo(config, overrides, workdir, args.timeout))
            print("\n".join(format_table(results[-1:]).splitlines()[1:]), flush=True)
            if args.json_out != "-":  # after every demo: an interrupted series keeps them
                write_json(args.json_out, {"timestamp": utc_timestamp(),
                                           "cpu_count": os.cpu_count(), "results": results})
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(format_table(results), file=sys.stderr if args.json_out == "-" else sys.stdout)
    if args.json_out == "-":
        write_json("-", {"timestamp": utc_timestamp(), "cpu_count": os.cpu_count(),
                         "results": results})
    if args.json_out != "-":
        print(f"  wrote {args.json_out}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
