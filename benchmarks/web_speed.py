#!/usr/bin/env python
"""The web page's speed: each exported page's inference time, float32 and int8, in headless
Chromium (MediaPipe Tasks for Web, wasm on the CPU), beside LiteRT in Python on the same files
and the same machine, and the page's load time.

    python scripts/export.py --config shapes_ssdlite.yaml --format web      # each page to time
    python benchmarks/web_speed.py runs/shapes_ssdlite/export/web [more page folders ...]
    python benchmarks/web_speed.py PAGE ... --runs 50 --screenshots docs/   # and the pictures

A benchmark, not a test. For every page folder (written by `mobilevision.export.web`) and model
(float32, int8), on the page's first sample (or --image):

1. Load: a fresh tab opens `index.html?image=SAMPLE&model=M` and the time from navigation to the
   result on the page (performance.now() when it sets data-done: MediaPipe's script and wasm,
   the model, a first warm-up call, the image and its run) is read; --loads tabs, the first of a
   page folder with the browser's cache empty for it ("cold"), the others' median ("warm").
2. Inference: in one more tab, `mobilevisionPage.time` calls MediaPipe's detect / classify /
   segment on the prepared image --runs times after --warmup calls, performance.now() around
   each call (what the page shows as inference time; not under --virtual-time-budget, which
   freezes the clock): median and 90th percentile. The call includes MediaPipe's own work
   around the model (image to tensor, decoding the outputs, copying masks out).
3. LiteRT: the same file in ai_edge_litert's Interpreter with --threads threads (default 1, as
   the page's wasm runs on one), the same input tensor set once, `invoke()` alone timed the same
   way.

Chromium runs without CAP_SYS_NICE (as root it would raise its own priority over the Python
side). Prints the CPU, the load average before and after (timings on a busy machine are slow
and noisy: run it on an idle one), one table, and writes the figures as JSON (--json-out,
default benchmarks/results/web_speed.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # run from elsewhere, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchmarkError, make_log, report_stream, utc_timestamp, write_json  # noqa: E402

VARIANTS = ("float32", "int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pages", nargs="+", help="page folders written by the web export")
    p.add_argument("--image", help="the image to time, a path inside each page folder "
                   "(default: the page's first sample)")
    p.add_argument("--runs", type=int, default=30, help="timed calls per model (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--loads", type=int, default=3, help="page loads per model (default 3)")
    p.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1)")
    p.add_argument("--screenshots", metavar="DIR",
                   help="also save each page as DIR/web_<task>.png (1100 x 720)")
    p.add_argument("--json-out", default="benchmarks/results/web_speed.json",
                   help="where the figures go ('-': stdout)")
    args = p.parse_args(argv)
    for key in ("runs", "loads", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def page_config(folder: Path) -> dict:
    """The JSON the export baked into the page's index.html (id="config")."""
    html = folder / "index.html"
    if not html.is_file():
        raise BenchmarkError(f"{folder}: no index.html (write the page with scripts/export.py "
                             f"--format web)")
    text = html.read_text(encoding="utf-8")
    try:
        return json.loads(text.split('id="config">', 1)[1].split("</script>", 1)[0])
    except (IndexError, ValueError) as e:
        raise BenchmarkError(f"{html}: no readable config JSON ({e})") from e


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
            "min_ms": round(ordered[0], 3), "runs": len(ordered)}


def time_litert(path: Path, x: np.ndarray, threads: int, runs: int, warmup: int) -> dict:
    """Median of `runs` invoke() calls after `warmup`, the input set once."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], x[None].astype(detail["dtype"]))
    for _ in range(warmup):
        interpreter.invoke()
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interpreter.invoke()
        ms.append((time.perf_counter() - t0) * 1000)
    return summary(ms)


def page_input(page, image: str, size) -> np.ndarray:
    """The input the page hands MediaPipe for `image` (a detector's at the input size, not
    enlarged), as an (h, w, 3) uint8 array."""
    got = page.evaluate(f"mobilevisionPage.pixels({json.dumps(image)})")["input"]
    x = np.frombuffer(base64.b64decode(got["rgb"]), np.uint8).reshape(
        got["height"], got["width"], 3)
    k = x.shape[0] // size[0]
    return np.ascontiguousarray(x[::k, ::k])


def bench_page(browser, folder: Path, args, log) -> list[dict]:
    from mobilevision.export.web.browser import save_screenshot, serve

    config = page_config(folder)
    image = args.image or (config["samples"][0] if config["samples"] else None)
    if image is None:
        raise BenchmarkError(f"{folder}: the page has no sample; name an image with --image")
    if not (folder / image).is_file():
        raise BenchmarkError(f"{folder / image}: no such file")
    size = tuple(config["inputSize"])
    rows = []
    with serve(folder) as url:
        for variant in [v for v in VARIANTS if v in config["models"]]:
            log(f"{config['name']} {variant}: {args.loads} page loads ...")
            loads = []
            for _ in range(args.loads):
                page = browser.new_page()
                page.goto(f"{url}/index.html?image={image}&model={variant}")
                page.wait_for("document.body.dataset.done === '1'", timeout=120)
                error = page.evaluate("document.getElementById('message').hidden ? null : "
                                      "document.getElementById('message').textContent")
                if error:
                    raise BenchmarkError(f"{folder} ({variant}): the page says: {error}")
                loads.append(page.evaluate("mobilevisionPage.timings"))
                page.close()
            log(f"{config['name']} {variant}: {args.warmup} + {args.runs} MediaPipe calls ...")
            page = browser.new_page()
            page.goto(f"{url}/index.html?image={image}&model={variant}")
            page.wait_for("document.body.dataset.done === '1'", timeout=120)
            ms = page.evaluate(f"mobilevisionPage.time({json.dumps(image)}, "
                               f"{json.dumps(variant)}, {args.runs}, {args.warmup})", timeout=600)
            x = page_input(page, image, size)
            page.close()
            log(f"{config['name']} {variant}: LiteRT, {args.threads} thread(s) ...")
            lite = time_litert(folder / config["models"][variant], x, args.threads, args.runs,
                               args.warmup)
            web = summary(ms)
            rows.append({
                "page": str(folder), "name": config["name"], "task": config["task"],
                "model": variant, "file": config["models"][variant],
                "input_size": list(size), "image": image,
                "page_inference": web, "litert": lite,
                "page_over_litert": round(web["median_ms"] / lite["median_ms"], 2),
                "load_cold_ms": round(loads[0]["done"], 1),
                "load_warm_ms": (round(statistics.median(t["done"] for t in loads[1:]), 1)
                                 if len(loads) > 1 else None),
                "loads": loads,
            })
        if args.screenshots:
            path = Path(args.screenshots) / f"web_{config['task']}.png"
            save_screenshot(browser, f"{url}/index.html", path)
            log(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")
    return rows


def run(args) -> dict:
    from importlib.metadata import version

    from mobilevision.export.web import MEDIAPIPE_VERSION
    from mobilevision.export.web.browser import Chromium, find_chromium

    if find_chromium() is None:
        raise BenchmarkError("no Chromium: apt-get install -y chromium")
    log = make_log(args.json_out)
    result = {"when": utc_timestamp(), "cpu": cpu_model(), "cores": os.cpu_count(),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
              "mediapipe_tasks_vision": MEDIAPIPE_VERSION,
              "ai_edge_litert": version("ai-edge-litert"), "litert_threads": args.threads,
              "runs": args.runs, "warmup": args.warmup, "loads": args.loads}
    rows = []
    with Chromium(timeout=120) as browser:
        result["chromium"] = browser.version
        for folder in args.pages:
            rows += bench_page(browser, Path(folder), args, log)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["rows"] = rows
    return result


def format_table(result: dict) -> str:
    lines = [f"CPU: {result['cpu']} ({result['cores']} cores); load average (1, 5, 15 min) "
             f"{result['loadavg_start']} before, {result['loadavg_end']} after",
             f"{result['chromium']}, MediaPipe Tasks Vision {result['mediapipe_tasks_vision']} "
             f"(wasm, CPU); LiteRT {result['ai_edge_litert']} on {result['litert_threads']} "
             f"thread(s); medians of {result['runs']} calls after {result['warmup']}", ""]
    head = (f"{'page':18s} {'task':14s} {'input':>7s} {'model':7s} {'page ms':>8s} "
            f"{'p90':>6s} {'LiteRT ms':>9s} {'page/LiteRT':>11s} {'load cold':>9s} "
            f"{'warm ms':>8s}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        size = "x".join(str(v) for v in r["input_size"])
        warm = "-" if r["load_warm_ms"] is None else f"{r['load_warm_ms']:.0f}"
        lines.append(f"{r['name'][:18]:18s} {r['task']:14s} {size:>7s} {r['model']:7s} "
                     f"{r['page_inference']['median_ms']:8.2f} {r['page_inference']['p90_ms']:6.2f} "
                     f"{r['litert']['median_ms']:9.2f} {r['page_over_litert']:10.2f}x "
                     f"{r['load_cold_ms']:9.0f} {warm:>8s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = run(args)
    except BenchmarkError as e:
        print(f"web_speed.py: error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_table(result), file=report_stream(args.json_out), flush=True)
    if args.json_out != "-":
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json_out, result)
    if args.json_out != "-":
        print(f"  wrote {args.json_out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
