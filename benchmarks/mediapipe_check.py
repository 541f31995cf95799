#!/usr/bin/env python
"""Does MediaPipe Tasks load our .tflite file and compute what LiteRT computes from it?

    python benchmarks/mediapipe_check.py --task detection|classification|segmentation \
        --model FILE.tflite --images DIR [--json-out F]

Runs in a virtual environment of its own (MediaPipe installs opencv-contrib-python, which clashes
with our opencv-python-headless; see benchmarks/README.md): it needs mediapipe, ai-edge-litert,
numpy and pillow, and neither TensorFlow nor mobilevision.

The file is loaded by MediaPipe's ObjectDetector / ImageClassifier / ImageSegmenter (which refuse
a file whose TFLite Metadata they cannot use) with nothing filtered (every result, score
threshold 0), and by LiteRT's Interpreter; both get the same RGB pixels. MediaPipe resizes an image
to the model's input size itself (stretching, bilinear), so every image is first brought to that
size here (PIL bilinear; a note says how many were), and both runtimes see identical input. Then:

- detection: LiteRT's boxes (normalized [ymin, xmin, ymax, xmax]) are converted to pixels as
  MediaPipe does (x = int(xmin * W), width = int((xmax - xmin) * W), bounded to the image) and
  every LiteRT detection must pair with one MediaPipe detection of the same class name (the label
  file's line for the class index), score within --score-tol and box within --box-tol pixels
  (MediaPipe reports the classes of one box as one Detection with several categories);
- classification: all K scores must agree within --score-tol, with the same label names and the
  same top-1;
- segmentation: MediaPipe's category mask must equal LiteRT's argmax on at least
  --min-mask-agreement of the pixels and the confidence masks must be within --mask-tol.

With --labels, the label file packed in the model must also equal the given one. Prints one row
per image and a verdict; writes the figures to --json-out (default: none; '-' is stdout). Exits 0
when all agree, 1 on any mismatch (or a MediaPipe run-time error, as wrongly ordered output
metadata gives), and 2 when MediaPipe refuses to load the file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TASKS = ("detection", "classification", "segmentation")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--model", required=True, help="the .tflite file (with TFLite Metadata)")
    p.add_argument("--images", required=True, help="folder of images (jpg, png, bmp)")
    p.add_argument("--max-images", type=int, default=50, help="use at most this many (default 50)")
    p.add_argument("--labels", help="expected label file (one name a line): the one packed in the "
                   "model must be equal")
    p.add_argument("--json-out", help="write the figures here as JSON ('-': stdout)")
    p.add_argument("--score-tol", type=float, default=1e-4,
                   help="largest score / probability difference (default 1e-4)")
    p.add_argument("--box-tol", type=int, default=1,
                   help="largest box corner difference in pixels (default 1: int truncation)")
    p.add_argument("--mask-tol", type=float, default=1e-4,
                   help="largest confidence mask difference (default 1e-4)")
    p.add_argument("--min-mask-agreement", type=float, default=0.999,
                   help="least fraction of pixels of equal category (default 0.999)")
    return p.parse_args(argv)


# Inputs ------------------------------------------------------------------------------------------


def load_images(folder: Path, size: tuple[int, int], limit: int):
    """[(name, (H, W, 3) uint8 RGB at `size`)], sorted by name; and how many were resized."""
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"error: no {'/'.join(sorted(IMAGE_SUFFIXES))} image in {folder}")
    images, resized = [], 0
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
                resized += 1
            images.append((path.name, np.ascontiguousarray(np.asarray(im, np.uint8))))
    return images, resized


def read_labels(path) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def packed_labels(model_bytes: bytes) -> list[str]:
    """The label file packed in the model's appended zip ([] when none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            for name in zf.namelist():
                if name.endswith(".txt"):
                    return zf.read(name).decode("utf-8").splitlines()
    except zipfile.BadZipFile:
        pass
    return []


# LiteRT ------------------------------------------------------------------------------------------


class LiteRT:
    """The file in LiteRT's Interpreter, outputs by signature name."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path)
        self.runner = self.interpreter.get_signature_runner()
        (self.input_name, detail), = self.runner.get_input_details().items()
        self.dtype = detail["dtype"]
        self.size = tuple(int(v) for v in detail["shape"][1:3])

    def __call__(self, image: np.ndarray) -> dict:
        x = image[None].astype(self.dtype)  # raw pixels: float32 0..255 or uint8
        return {k: np.asarray(v) for k, v in self.runner(**{self.input_name: x}).items()}


# MediaPipe ---------------------------------------------------------------------------------------


def mediapipe_task(task: str, path: str):
    """The MediaPipe Tasks object for `task`, configured to filter nothing."""
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    base = BaseOptions(model_asset_path=path)
    if task == "detection":
        return vision.ObjectDetector.create_from_options(vision.ObjectDetectorOptions(
            base_options=base, max_results=-1, score_threshold=0.0))
    if task == "classification":
        # max_results / score_threshold unset: every class, no threshold (-FLT_MAX).
        return vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
            base_options=base))
    return vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
        base_options=base, output_confidence_masks=True, output_category_mask=True))


def mp_image(array: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=array)


# Comparisons, one image each ---------------------------------------------------------------------


def compare_detection(args, mp_task, lite, image, labels) -> dict:
    h, w = image.shape[:2]
    out = lite(image)
    n = int(out["count"].reshape(-1)[0])
    ours = []
    for box, cls, score in zip(out["boxes"][0][:n], out["classes"][0][:n], out["scores"][0][:n]):
        if score < 0.0:  # below MediaPipe's threshold (0): dropped there too
            continue
        y0, x0, y1, x1 = (float(v) for v in box)
        # MediaPipe: relative box (xmin, ymin, width, height) -> int pixels, bounded to the image.
        px = [min(max(int(x0 * w), 0), w), min(max(int(y0 * h), 0), h),
              min(max(int((x1 - x0) * w), 0), w), min(max(int((y1 - y0) * h), 0), h)]
        name = labels[int(cls)] if 0 <= int(cls) < len(labels) else str(int(cls))
        ours.append((name, float(score), px))
    # MediaPipe merges detections of one box (per-class NMS keeps a box once per class) into one
    # Detection with several categories: one entry per category here, as LiteRT lists them.
    theirs = []
    for det in mp_task.detect(mp_image(image)).detections:
        b = det.bounding_box
        for c in det.categories:
            theirs.append((c.category_name if c.category_name is not None else str(c.index),
                           float(c.score), [b.origin_x, b.origin_y, b.width, b.height]))
    # Pair each LiteRT detection with the closest unused MediaPipe one of the same class.
    unused = list(range(len(theirs)))
    box_diff, score_diff, unmatched = 0, 0.0, 0
    for name, score, px in ours:
        best = None
        for j in unused:
            if theirs[j][0] != name:
                continue
            db = max(abs(a - b) for a, b in zip(px, theirs[j][2]))
            ds = abs(score - theirs[j][1])
            if best is None or (db, ds) < best[1:]:
                best = (j, db, ds)
        if best is None or best[1] > args.box_tol or best[2] > args.score_tol:
            unmatched += 1
            continue
        unused.remove(best[0])
        box_diff, score_diff = max(box_diff, best[1]), max(score_diff, best[2])
    ok = unmatched == 0 and not unused
    return {"litert_detections": len(ours), "mediapipe_detections": len(theirs),
            "unmatched_litert": unmatched, "unmatched_mediapipe": len(unused),
            "max_box_px_diff": box_diff, "max_score_diff": score_diff, "ok": ok}


def compare_classification(args, mp_task, lite, image, labels) -> dict:
    probs = lite(image)["probabilities"][0].astype(np.float64)
    categories = mp_task.classify(mp_image(image)).classifications[0].categories
    theirs = np.full(probs.shape, np.nan)
    names_ok = len(categories) == len(probs)
    for c in categories:
        theirs[c.index] = c.score
        if labels and (c.index >= len(labels) or c.category_name != labels[c.index]):
            names_ok = False
    diff = float(np.nanmax(np.abs(theirs - probs))) if not np.isnan(theirs).all() else np.inf
    top_ours = int(np.argmax(probs))
    top_theirs = categories[0].index if categories else -1
    # Ties (an untrained model's uniform scores) may sort either way: a top-1 differing only by a
    # tie within the tolerance is no mismatch.
    top_ok = top_ours == top_theirs or abs(probs[top_ours] - probs[top_theirs]) <= args.score_tol
    ok = names_ok and diff <= args.score_tol and top_ok and not np.isnan(theirs).any()
    return {"classes": len(probs), "mediapipe_categories": len(categories),
            "max_score_diff": diff, "top1_litert": top_ours, "top1_mediapipe": top_theirs,
            "label_names_ok": names_ok, "ok": bool(ok)}


def compare_segmentation(args, mp_task, lite, image, labels) -> dict:
    scores = lite(image)["scores"][0]
    result = mp_task.segment(mp_image(image))
    conf = np.stack([m.numpy_view().reshape(scores.shape[:2]) for m in result.confidence_masks],
                    axis=-1)
    category = result.category_mask.numpy_view().reshape(scores.shape[:2])
    agreement = float(np.mean(category == np.argmax(scores, axis=-1)))
    diff = float(np.max(np.abs(conf - scores))) if conf.shape == scores.shape else np.inf
    labels_ok = not labels or list(mp_task.labels) == labels
    ok = agreement >= args.min_mask_agreement and diff <= args.mask_tol and labels_ok
    return {"classes": int(scores.shape[-1]), "mediapipe_masks": len(result.confidence_masks),
            "category_agreement": agreement, "max_confidence_diff": diff,
            "labels_ok": labels_ok, "ok": bool(ok)}


COMPARE = {"detection": compare_detection, "classification": compare_classification,
           "segmentation": compare_segmentation}
COLUMNS = {
    "detection": [("litert_detections", "LiteRT", "d"), ("mediapipe_detections", "MediaPipe", "d"),
                  ("unmatched_litert", "unpaired", "d"), ("max_box_px_diff", "box px", "d"),
                  ("max_score_diff", "score diff", ".2e")],
    "classification": [("top1_litert", "top1 LiteRT", "d"), ("top1_mediapipe", "top1 MP", "d"),
                       ("max_score_diff", "score diff", ".2e")],
    "segmentation": [("category_agreement", "same category", ".5f"),
                     ("max_confidence_diff", "confidence diff", ".2e")],
}


def table(task: str, rows: list[dict]) -> str:
    cols = COLUMNS[task]
    widths = [max(len("image"), *(len(r["image"]) for r in rows))] + [
        max(len(title), 10) for _, title, _ in cols]
    lines = ["  ".join([f"{'image':<{widths[0]}}"] + [f"{t:>{w}}" for (_, t, _), w in
                                                       zip(cols, widths[1:])] + ["  ok"])]
    for r in rows:
        if "error" in r:
            text = " ".join(r["error"].split())
            text = text if len(text) <= 220 else f"{text[:60]} ... {text[-160:]}"
            lines.append(f"{r['image']:<{widths[0]}}  ERROR {text}")
            continue
        cells = [f"{format(r[k], f):>{w}}" for (k, _, f), w in zip(cols, widths[1:])]
        lines.append("  ".join([f"{r['image']:<{widths[0]}}"] + cells
                               + ["  ok" if r["ok"] else "  MISMATCH"]))
    return "\n".join(lines)


def summary(task: str, rows: list[dict]) -> dict:
    s = {"images": len(rows), "mismatched_images": sum(not r["ok"] for r in rows),
         "failed_images": sum("error" in r for r in rows)}
    rows = [r for r in rows if "error" not in r]
    if not rows:
        return s
    if task == "detection":
        s.update(detections=sum(r["litert_detections"] for r in rows),
                 max_box_px_diff=max(r["max_box_px_diff"] for r in rows),
                 max_score_diff=max(r["max_score_diff"] for r in rows))
    elif task == "classification":
        s.update(max_score_diff=max(r["max_score_diff"] for r in rows),
                 top1_agreement=float(np.mean([r["top1_litert"] == r["top1_mediapipe"]
                                               for r in rows])))
    else:
        s.update(min_category_agreement=min(r["category_agreement"] for r in rows),
                 mean_category_agreement=float(np.mean([r["category_agreement"] for r in rows])),
                 max_confidence_diff=max(r["max_confidence_diff"] for r in rows))
    return s


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("mediapipe", "ai-edge-litert", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    model_bytes = Path(args.model).read_bytes()
    labels = packed_labels(model_bytes)
    lite = LiteRT(args.model)
    images, resized = load_images(Path(args.images), lite.size, args.max_images)
    report = {"task": args.task, "model": str(args.model), "input": {
        "size": list(lite.size), "dtype": np.dtype(lite.dtype).name},
        "labels": labels, "versions": versions(), "tolerances": {
            "score": args.score_tol, "box_px": args.box_tol, "mask": args.mask_tol,
            "min_mask_agreement": args.min_mask_agreement}}
    try:
        mp_task = mediapipe_task(args.task, args.model)
    except Exception as e:  # MediaPipe raises ValueError / RuntimeError / FileNotFoundError
        print(f"MediaPipe refused {args.model}: {type(e).__name__}: {e}", file=sys.stderr)
        report.update(loaded=False, error=f"{type(e).__name__}: {e}")
        emit(args.json_out, report)
        return 2
    rows = []
    for name, image in images:
        try:
            rows.append({"image": name, **COMPARE[args.task](args, mp_task, lite, image, labels)})
        except Exception as e:  # MediaPipe's graph fails at run time on inconsistent metadata
            rows.append({"image": name, "ok": False, "error": f"{type(e).__name__}: {e}"})
    try:
        mp_task.close()
    except Exception:  # a graph that failed may fail its close too; the rows say why
        pass
    expected = read_labels(args.labels) if args.labels else None
    labels_ok = expected is None or expected == labels
    report.update(loaded=True, resized_images=resized, labels_ok=labels_ok,
                  summary=summary(args.task, rows), images=rows)
    out = sys.stderr if args.json_out == "-" else sys.stdout
    print(f"{args.task}: {args.model} ({report['input']['dtype']} input "
          f"{lite.size[0]}x{lite.size[1]}), {len(rows)} images"
          + (f", {resized} resized to the input size first" if resized else ""), file=out)
    print(table(args.task, rows), file=out)
    s = report["summary"]
    if not labels_ok:
        print(f"MISMATCH: the packed label file {labels} is not --labels {expected}", file=out)
    verdict = "OK: MediaPipe and LiteRT agree" if not s["mismatched_images"] else \
        f"MISMATCH on {s['mismatched_images']} of {s['images']} images"
    if not labels_ok:
        verdict = "MISMATCH of the label file; " + verdict
    print(f"{verdict}  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in s.items()), file=out)
    emit(args.json_out, report)
    return 1 if s["mismatched_images"] or not labels_ok else 0


def emit(path, report) -> None:
    if not path:
        return
    text = json.dumps(report, indent=2, default=float) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
