"""Synthetic "shapes" dataset, written in real file formats.

Scenes of coloured geometric shapes (circle, square, triangle, star, hexagon) on textured
backgrounds (gradients, stripes, smooth colour blobs, checkers, blends of two), with random size,
aspect, rotation, shading, partial occlusion, pixel noise and blur: easy enough for a small CNN to
learn in minutes, hard enough that a broken pipeline shows.

The generators write the layouts the real readers consume, so the demo and the tests exercise the
same code as real data:

    classification  root/{train,val}/<class>/<index>.{jpg,png}           (ImageNet class folders)
    detection       root/{train,val}/images/<id>.jpg                      (COCO instances JSON)
                    root/annotations/instances_{train,val}.json
    segmentation    root/JPEGImages/<id>.jpg                              (PASCAL VOC 2012)
                    root/SegmentationClass/<id>.png   palette PNG, 0 = background, 255 = ignore
                    root/ImageSets/Segmentation/{train,val}.txt
                    root/classes.txt
    every kind      root/shapes.json   manifest (kind, params, version), written last

Output is a pure function of (kind, params, seed): each image draws from its own generator
seeded by (seed, kind, split, index), so it does not depend on thread count or order.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "hexagon")

# Bump when rendering or layout changes, so `ensure_shapes` regenerates cached datasets.
SHAPES_VERSION = 1
MANIFEST_NAME = "shapes.json"
IGNORE_LABEL = 255

_INCOMPLETE_MARKER = ".shapes_incomplete"
_LOCK_NAME = ".shapes.lock"
# Everything a generator may write under root; only removed from a directory that is ours.
_OWNED_PATHS = ("train", "val", "annotations", "JPEGImages", "SegmentationClass", "ImageSets", "classes.txt")
_KIND_CODES = {"classification": 1, "detection": 2, "segmentation": 3}
_SPLIT_CODES = {"train": 1, "val": 2}
_JPEG_QUALITY = 90
_MAX_WORKERS = 4
_PROCESS_MIN_IMAGES = 1000  # a split this large is shared with worker processes


# ----------------------------------------------------------------------------------------------
# Colour maps and ids
# ----------------------------------------------------------------------------------------------


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC palette. Returns (n, 3) uint8; entry 0 is black, 255 is (224, 224, 192)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_VOC_PALETTE = voc_colormap(256).reshape(-1).tolist()


def coco_category_id(class_id: int) -> int:
    """COCO category id of shape `class_id` (0-based). Deliberately non-contiguous: 1, 3, 5, ..."""
    return 2 * int(class_id) + 1


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _regular(n: int, start_deg: float, radii=(1.0,)) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    r = np.resize(np.asarray(radii, np.float64), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


# Unit outlines, circumradius 1, centred on the origin; (N, 2) as (x, y).
_UNIT_SHAPES = {
    "circle": _regular(48, 0.0),
    "square": _regular(4, 45.0),
    "triangle": _regular(3, -90.0),
    "star": _regular(10, -90.0, radii=(1.0, 0.45)),
    "hexagon": _regular(6, 0.0),
}


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _two_colours(rng):
    return rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)


def _rotated_coords(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    return xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)


def _gradient(rng, h, w):
    u, _ = _rotated_coords(rng, h, w)
    t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    return t


def _stripes(rng, h, w):
    u, _ = _rotated_coords(rng, h, w)
    period = rng.uniform(5, max(6.0, min(h, w) / 3))
    t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if rng.random() < 0.5:  # hard-edged stripes half the time
        t = (t > 0.5).astype(np.float32)
    return t


def _checker(rng, h, w):
    u, v = _rotated_coords(rng, h, w)
    cell = rng.uniform(4, max(5.0, min(h, w) / 4))
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)


def _texture(rng, h, w):
    """One background texture: (h, w, 3) float32 in [0, 255]."""
    kind = rng.integers(4)
    if kind == 3:  # smooth colour blobs: upsampled low-resolution colour noise
        grid = int(rng.integers(3, 9))
        small = rng.uniform(0, 255, (grid, grid, 3)).astype(np.float32)
        return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255)
    t = (_gradient, _stripes, _checker)[kind](rng, h, w)
    c0, c1 = _two_colours(rng)
    return c0 + t[:, :, None] * (c1 - c0)


def _background(rng, h, w, contrast: float = 1.0):
    image = _texture(rng, h, w)
    if rng.random() < 0.4:
        alpha = rng.uniform(0.2, 0.5)
        image = image * (1 - alpha) + _texture(rng, h, w) * alpha
    if contrast != 1.0:  # pull the texture towards its mean colour
        mean = image.reshape(-1, 3).mean(axis=0)
        image = mean + contrast * (image - mean)
    return image.astype(np.float32)


def _coverage(polygon: np.ndarray, h: int, w: int, supersample: int = 8) -> np.ndarray:
    """Anti-aliased coverage (h, w) uint8 0..255 of a polygon given in pixel-area coordinates.

    Coordinates follow COCO: pixel (i, j) covers [j, j+1) x [i, i+1). The polygon is filled at
    `supersample` times the resolution and box-averaged. (OpenCV's own LINE_AA fill overshoots
    thin corners by a pixel, so `coverage >= 128` would not match what pycocotools rasterises
    from the same polygon; this does, to within boundary pixels.)
    """
    s = supersample
    x0, y0 = (max(int(np.floor(v)), 0) for v in polygon.min(axis=0))
    x1, y1 = min(int(np.ceil(polygon[:, 0].max())), w), min(int(np.ceil(polygon[:, 1].max())), h)
    cover = np.zeros((h, w), np.uint8)
    if x1 <= x0 or y1 <= y0:
        return cover
    canvas = np.zeros(((y1 - y0) * s, (x1 - x0) * s), np.uint8)
    # Sub-sample k covers [k, k+1) / s and OpenCV puts its centre on the integer k, hence -0.5.
    points = np.round(((polygon - (x0, y0)) * s - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [points], 255, lineType=cv2.LINE_8, shift=4)
    cover[y0:y1, x0:x1] = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return cover


def _contrasting_colour(rng, image, mask, min_distance=90.0):
    """A random colour far (in RGB) from the mean of `image` under `mask`."""
    under = image[mask].mean(axis=0) if mask.any() else np.full(3, 127.0)
    best, best_distance = None, -1.0
    for _ in range(10):
        colour = rng.uniform(0, 255, 3)
        distance = float(np.linalg.norm(colour - under))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= min_distance:
            break
    return best.astype(np.float32)


def _paint(rng, image, cover, colour, centre, radius):
    """Alpha-blend a shaded fill into `image` (in place) where `cover` > 0."""
    ys, xs = np.nonzero(cover)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    alpha = cover[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    # A linear shading across the object so that it is not a flat colour.
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ramp = ((xx + 0.5 - centre[0]) * direction[0] + (yy + 0.5 - centre[1]) * direction[1]) / max(radius, 1.0)
    fill = colour + ramp[:, :, None] * rng.uniform(0, 40)
    patch = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = patch * (1 - alpha) + fill * alpha


def _mask_bbox(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the pixels of a (h, w) bool mask, in COCO pixel-area coordinates."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def render_scene(
    rng: np.random.Generator,
    size=(96, 96),
    num_objects=(1, 4),
    min_size_frac: float = 0.15,
    max_size_frac: float = 0.6,
    class_ids=None,
    max_occlusion: float = 0.35,
    min_visible_area: int = 12,
    noise_std=(0.0, 6.0),
    blur_prob: float = 0.25,
    texture_contrast: float = 1.0,
):
    """Render one scene of shapes on a textured background.

    Args:
        rng: numpy Generator; the only source of randomness.
        size: int or (H, W) in pixels.
        num_objects: (min, max) inclusive number of objects to attempt (ignored if class_ids).
        min_size_frac, max_size_frac: object diameter (circumscribed circle) as a fraction of
            min(H, W), drawn log-uniformly so that small and large objects are both common.
        class_ids: optional sequence of 0-based class ids to draw, in order (e.g. one given class
            for classification); otherwise classes are drawn uniformly.
        max_occlusion: a placement is retried (up to 12 times, then the object is skipped) if it
            would hide more than this fraction of an earlier object.
        min_visible_area: objects with fewer visible pixels are dropped from the annotations.
        noise_std: (min, max) standard deviation of the added Gaussian pixel noise.
        blur_prob: probability of a slight Gaussian blur over the whole image.
        texture_contrast: scales the background texture's deviation from its mean colour
            (1 = full contrast; smaller makes the shapes easier to tell from the background).

    Returns:
        image: (H, W, 3) uint8 RGB.
        objects: list in drawing order (back to front) of dicts:
            class_id: int, 0-based index into SHAPE_CLASSES;
            bbox: [x, y, w, h] floats, tight box of the visible mask, in pixels;
            polygon: [x0, y0, x1, y1, ...] floats, the full (amodal) outline, in pixels;
            mask: (H, W) bool, the visible part after later objects occlude it;
            area: int, visible pixel count;
            occluded: bool, whether a later object hides part of it.
    """
    h, w = _hw(size)
    image = _background(rng, h, w, texture_contrast)
    if class_ids is None:
        count = int(rng.integers(num_objects[0], num_objects[1] + 1))
        class_ids = rng.integers(0, len(SHAPE_CLASSES), size=count)
    short = min(h, w)
    placed = []
    for class_id in class_ids:
        class_id = int(class_id)
        diameter = short * np.exp(rng.uniform(np.log(min_size_frac), np.log(max_size_frac)))
        scale = 0.5 * diameter * np.array([1.0, rng.uniform(0.8, 1.2)])  # mild aspect change
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        outline = (_UNIT_SHAPES[SHAPE_CLASSES[class_id]] * scale) @ rotation.T
        lo, hi = outline.min(axis=0), outline.max(axis=0)
        for _ in range(12):
            # Keep the whole outline inside the image, so boxes and polygons never need clipping.
            cx = rng.uniform(-lo[0], w - hi[0]) if hi[0] - lo[0] < w else w / 2
            cy = rng.uniform(-lo[1], h - hi[1]) if hi[1] - lo[1] < h else h / 2
            polygon = np.clip(outline + (cx, cy), 0, (w, h))
            cover = _coverage(polygon, h, w)
            mask = cover >= 128
            area = int(mask.sum())
            if area < min_visible_area:
                break
            if all(
                int((p["mask"] & ~mask).sum()) >= max((1 - max_occlusion) * p["full_area"], min_visible_area)
                for p in placed
            ):
                break
        else:
            continue
        if area < min_visible_area:
            continue
        for p in placed:
            hidden = p["mask"] & mask
            if hidden.any():
                p["mask"] &= ~mask
                p["occluded"] = True
        colour = _contrasting_colour(rng, image, mask)
        _paint(rng, image, cover, colour, (cx, cy), diameter / 2)
        placed.append(
            {"class_id": class_id, "polygon": polygon, "mask": mask, "full_area": area, "occluded": False}
        )

    std = rng.uniform(*noise_std)
    if std > 0:
        image += rng.normal(0.0, std, image.shape).astype(np.float32)
    if rng.random() < blur_prob:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 1.0))
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    objects = []
    for p in placed:
        area = int(p["mask"].sum())
        if area < min_visible_area:
            continue
        objects.append(
            {
                "class_id": p["class_id"],
                "bbox": _mask_bbox(p["mask"]),
                "polygon": [round(float(v), 2) for v in p["polygon"].reshape(-1)],
                "mask": p["mask"],
                "area": area,
                "occluded": p["occluded"],
            }
        )
    return image, objects


def _segmentation_polygons(obj) -> list[list[float]]:
    """COCO `segmentation` of an object: its exact outline if fully visible, else the contours of
    its visible mask (pixel-centre coordinates). Polygons with fewer than 3 points are dropped:
    pycocotools would read a 4-number polygon as a box."""
    if not obj["occluded"]:
        return [obj["polygon"]]
    contours, _ = cv2.findContours(obj["mask"].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [
        [round(float(v) + 0.5, 2) for v in c.reshape(-1)] for c in contours if len(c) >= 3
    ]
    if not polygons:  # a visible sliver: fall back to its box
        x, y, bw, bh = obj["bbox"]
        polygons = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
    return polygons


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    # Seeded per image from (seed, kind, split, index): results do not depend on worker count,
    # and train/val (or classification/detection) images never repeat each other.
    return np.random.default_rng([int(seed), _KIND_CODES[kind], _SPLIT_CODES[split], int(index)])


def _write_image(path: Path, image: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB as JPEG or PNG, chosen by the suffix."""
    if path.suffix == ".png":
        ok, encoded = cv2.imencode(".png", image[:, :, ::-1])
    else:
        ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(encoded.tobytes())


def _make_classification(index, *, split, root, size, seed, texture_contrast):
    class_id = index % len(SHAPE_CLASSES)
    rng = _rng(seed, "classification", split, index)
    image, _ = render_scene(rng, tuple(size), class_ids=[class_id], min_size_frac=0.45, max_size_frac=0.85,
                            noise_std=(0.0, 2.0), blur_prob=0.0, texture_contrast=texture_contrast)
    suffix = ".png" if index % 4 == 3 else ".jpg"
    _write_image(Path(root) / split / SHAPE_CLASSES[class_id] / f"{index:05d}{suffix}", image)
    return class_id


def _make_detection(index, *, split, image_dir, size, seed, objects_per_image, min_size_frac,
                    texture_contrast):
    rng = _rng(seed, "detection", split, index)
    image, objects = render_scene(rng, tuple(size), num_objects=tuple(objects_per_image),
                                  min_size_frac=min_size_frac, max_size_frac=0.6,
                                  texture_contrast=texture_contrast)
    file_name = f"{index + 1:06d}.jpg"
    _write_image(Path(image_dir) / file_name, image)
    anns = [
        {"category_id": coco_category_id(o["class_id"]), "bbox": o["bbox"], "area": float(o["area"]),
         "iscrowd": 0, "segmentation": _segmentation_polygons(o)}
        for o in objects
    ]
    return {"id": index + 1, "file_name": file_name, "width": size[1], "height": size[0]}, anns


def _make_segmentation(index, *, split, root, size, seed, texture_contrast):
    h, w = size
    rng = _rng(seed, "segmentation", split, index)
    image, objects = render_scene(rng, (h, w), num_objects=(1, 4), min_size_frac=0.12, max_size_frac=0.6,
                                  texture_contrast=texture_contrast)
    image_id = f"{split}_{index:06d}"
    _write_image(Path(root) / "JPEGImages" / f"{image_id}.jpg", image)
    label = Image.fromarray(_label_map(objects, h, w))
    label.putpalette(_VOC_PALETTE)  # turns the "L" image into "P"
    label.save(Path(root) / "SegmentationClass" / f"{image_id}.png", optimize=False)
    return image_id, len(objects)


# One image of each kind: (index, split=..., **args) -> what the generator collects. The args are
# JSON values (paths as strings), so that a worker process can be sent them.
_MAKERS = {"classification": _make_classification, "detection": _make_detection,
           "segmentation": _make_segmentation}


def _maker(kind: str, split: str, args: dict):
    """index -> `kind`'s maker for one image of `split`, here or in a worker process."""
    return functools.partial(_MAKERS[kind], split=split, **args)


def _parallel_map(kind: str, n: int, split: str, **args) -> list:
    """[maker(i) for i in range(n)] for `kind`'s maker, ordered. Rendering is mostly small numpy
    operations that hold the GIL (threads gained 1.2-1.3x on 2 cores), so a large split
    (`_PROCESS_MIN_IMAGES` or more) is shared with worker processes; a small one runs on a few
    threads (OpenCV and zlib release the GIL), where starting interpreters would cost more than it
    saves. Reports each finished image of `split` to the progress line `ensure_shapes` opened."""
    make = _maker(kind, split, args)
    workers = min(_MAX_WORKERS, os.cpu_count() or 1)
    if workers <= 1 or n < 16:
        return _collect(map(make, range(n)), split)
    if n >= _PROCESS_MIN_IMAGES and sys.executable:
        return _in_processes(kind, n, split, args, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _collect(pool.map(make, range(n)), split)


def _collect(results, split: str) -> list:
    progress, done = _PROGRESS.get(), []
    for result in results:
        done.append(result)
        if progress is not None:
            progress.update(split, len(done))
    return done


def _in_processes(kind, n, split, args, workers) -> list:
    """Images [0, n) in `workers` processes, each a contiguous block: this process renders the
    first (and reports progress for all), `workers - 1` fresh interpreters the others. They are
    started with `python -c`, not forked (the caller may hold TensorFlow's threads) and not through
    multiprocessing (whose spawn would re-run the caller's main script), and send their results
    back as JSON. Output is byte-identical to one process's: each image has its own seed."""
    make, bounds = _maker(kind, split, args), [n * k // workers for k in range(workers + 1)]
    progress = _PROGRESS.get()
    children = []

    def report(own):
        if progress is not None:
            progress.update(split, own + sum(c.done for c in children))

    try:
        for k in range(1, workers):
            children.append(_Worker(kind, split, args, bounds[k], bounds[k + 1]))
        results = []
        for i in range(bounds[1]):
            results.append(make(i))
            report(len(results))
        for child in children:
            while not child.finished(timeout=0.2):
                report(bounds[1])
            results.extend(child.results())
        report(bounds[1])
        return results
    finally:
        for child in children:
            child.close()


class _Worker:
    """A `python -c` process rendering images [start, stop) of one split (`_worker_main`). It
    prints `p <done>` as it goes and `r <JSON list of results>` at the end; its stderr goes to a
    temporary file that a failure quotes."""

    def __init__(self, kind, split, args, start, stop):
        import subprocess
        import tempfile

        self.kind, self.split, self.start, self.stop = kind, split, start, stop
        self.done, self._results = 0, None
        self._stderr = tempfile.TemporaryFile()
        package_parent = str(Path(__file__).resolve().parents[2])  # where `mobilevision` imports from
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from mobilevision.data.shapes import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        job = {"kind": kind, "split": split, "args": args, "start": start, "stop": stop}
        try:
            self._process.stdin.write(json.dumps(job).encode("utf-8"))
            self._process.stdin.close()
        except BrokenPipeError:  # it ended before reading: `results` reports its status and output
            pass
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._process.stdout:
            if line.startswith(b"p "):
                self.done = int(line[2:])
            elif line.startswith(b"r "):
                self._results = json.loads(line[2:])
                self.done = len(self._results)

    def finished(self, timeout: float) -> bool:
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def results(self) -> list:
        code = self._process.wait()
        if code != 0 or self._results is None or len(self._results) != self.stop - self.start:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace")[-3000:]
            raise RuntimeError(
                f"shapes generation: the worker process for {self.kind} {self.split} images "
                f"{self.start}..{self.stop - 1} failed (exit status {code}); its output:\n{tail}")
        return self._results

    def close(self):
        if self._process.poll() is None:  # interrupted, or another worker failed
            self._process.kill()
            self._process.wait()
        self._reader.join(1.0)
        self._process.stdout.close()
        self._stderr.close()


def _worker_main() -> None:
    """The worker process's side of `_Worker`: read the job from stdin, render, report."""
    job = json.loads(sys.stdin.read())
    make = _maker(job["kind"], job["split"], job["args"])
    results, out = [], sys.stdout
    for index in range(job["start"], job["stop"]):
        results.append(make(index))
        if len(results) % 25 == 0:
            out.write(f"p {len(results)}\n")
            out.flush()
    out.write("r " + json.dumps(results) + "\n")
    out.flush()


# The progress line of the generation running in this thread (set by ensure_shapes); a context
# variable, not an argument, so the generators' signatures stay exactly their dataset parameters.
_PROGRESS: ContextVar["_Progress | None"] = ContextVar("shapes_progress", default=None)


class _Progress:
    """Says how far generation is on stdout: `generating shapes data in ROOT: train 1200/4000`,
    rewritten in place (at most 10 times a second) on a terminal, else a plain line at each
    quarter so logs stay readable; then `generated N images (KIND) in ROOT in S s`."""

    def __init__(self, root, kind: str, counts: dict, stream=None):
        self.root, self.kind, self.counts = root, kind, counts
        self.total = sum(counts.values())
        self.stream = sys.stdout if stream is None else stream
        self.tty = _isatty(self.stream)
        self.start = self.shown = time.monotonic()
        self.finished = {split: 0 for split in counts}  # images done, per split
        self.quarter = 0  # quarters of the total reported (not a terminal)
        self.width = 0  # length of the line on screen (a terminal)
        split_counts = " + ".join(f"{n} {split}" for split, n in counts.items())
        self._print(f"generating shapes data in {root} ({kind}, {split_counts} images; "
                    f"once, then reused)", end="" if self.tty else "\n")

    def update(self, split: str, done: int) -> None:
        self.finished[split] = done
        now = time.monotonic()
        line = (f"generating shapes data in {self.root}: {split} {done}/{self.counts[split]}, "
                f"{now - self.start:.0f} s")
        if self.tty:
            if now - self.shown >= 0.1 or done == self.counts[split]:
                self.shown = now
                self._print(line, end="")
            return
        quarter = 4 * sum(self.finished.values()) // max(self.total, 1)
        if self.quarter < quarter < 4:
            self.quarter = quarter
            self._print(line)

    def close(self) -> None:
        seconds = time.monotonic() - self.start
        self._print(f"generated {self.total} images ({self.kind}) in {self.root} in {seconds:.1f} s")

    def interrupted(self) -> None:
        """End a line left open on a terminal, so that the error starts on its own line."""
        if self.tty and self.width and self.stream is not None:
            with suppress(OSError, ValueError):
                self.stream.write("\n")
                self.stream.flush()

    def _print(self, text: str, end: str = "\n") -> None:
        if self.stream is None:
            return
        if self.tty:  # overwrite the previous line, spaces where it was longer
            text, self.width = "\r" + text.ljust(self.width), len(text) if end == "" else 0
        try:
            self.stream.write(text + end)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout: progress is not worth failing
            self.stream = None


def _isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _prepare_root(root: Path) -> None:
    """Make `root` ready to (re)generate into: refuse a directory that is not ours, then mark it
    incomplete and remove the manifest before deleting old outputs, so an interruption at any
    point leaves a directory that `ensure_shapes` regenerates."""
    root.mkdir(parents=True, exist_ok=True)
    manifest, marker = root / MANIFEST_NAME, root / _INCOMPLETE_MARKER
    foreign = [p for p in root.iterdir() if p.name != _LOCK_NAME]
    if not manifest.exists() and not marker.exists() and foreign:
        raise FileExistsError(
            f"{root} is not empty and holds no {MANIFEST_NAME}: not a shapes dataset, refusing to "
            "overwrite it; pick an empty or new directory"
        )
    marker.touch()
    manifest.unlink(missing_ok=True)
    for name in _OWNED_PATHS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _finish(root: Path, kind: str, params: dict, summary: dict) -> dict:
    """Write the manifest last, atomically, then drop the incomplete marker."""
    # No absolute path in the manifest: the same dataset is byte-identical wherever it is written.
    stored = {k: v for k, v in summary.items() if k != "root"}
    manifest = {"kind": kind, "version": SHAPES_VERSION, "params": _jsonable(params), "summary": stored}
    _write_json_atomic(root / MANIFEST_NAME, manifest)
    (root / _INCOMPLETE_MARKER).unlink(missing_ok=True)
    return summary


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(obj):
    """Tuples -> lists etc., so that params compare equal to what a manifest reads back."""
    return json.loads(json.dumps(obj))


def generate_classification(root, num_train: int = 1000, num_val: int = 200, image_size=96, seed: int = 0,
                            texture_contrast: float = 0.3) -> dict:
    """Write an ImageNet-style class-folder dataset: one large shape per image.

    Layout: root/{train,val}/<class name>/<index:05d>.jpg (every 4th image .png instead).
    Classes are balanced: image `index` has class `index % len(SHAPE_CLASSES)`.

    Args:
        root: output directory (created; must be empty or a previous shapes dataset).
        num_train, num_val: number of images per split.
        image_size: int or (H, W).
        seed: non-negative int.
        texture_contrast: background texture contrast (see render_scene). The default 0.3 keeps
            the backgrounds textured while letting a small network learn the shapes from scratch
            in minutes; at full contrast it mostly memorizes backgrounds first.

    Returns:
        dict: kind, root, classes, image_size [H, W], splits {split: {"images": n}},
        class_counts {split: {class name: n}}. Also stored in root/shapes.json.
    """
    root = Path(root)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
              "texture_contrast": texture_contrast}
    _prepare_root(root)
    size = _hw(image_size)
    summary = {"kind": "classification", "root": str(root), "classes": list(SHAPE_CLASSES),
               "image_size": list(size), "splits": {}, "class_counts": {}}
    for split, count in (("train", num_train), ("val", num_val)):
        for name in SHAPE_CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)

        labels = _parallel_map("classification", count, split, root=str(root), size=list(size),
                               seed=seed, texture_contrast=texture_contrast)
        summary["splits"][split] = {"images": count}
        summary["class_counts"][split] = {name: labels.count(i) for i, name in enumerate(SHAPE_CLASSES)}
    return _finish(root, "classification", params, summary)


def generate_detection(
    root, num_train: int = 1000, num_val: int = 200, image_size=128, seed: int = 0, objects_per_image=(1, 4),
    texture_contrast: float = 1.0, min_size_frac: float = 0.08,
) -> dict:
    """Write a COCO-format detection/instance dataset.

    Layout: root/{train,val}/images/<image id:06d>.jpg and
    root/annotations/instances_{train,val}.json with
        images: {id, file_name, width, height}  (file_name relative to <split>/images/),
        annotations: {id, image_id, category_id, bbox [x, y, w, h], area, iscrowd 0,
                      segmentation [[x0, y0, x1, y1, ...], ...]}  (visible part; area = pixels),
        categories: {id, name, supercategory "shape"} with NON-contiguous ids 1, 3, 5, ...
    Object diameters range from 8% to 60% of the short side (log-uniform).

    Args:
        root: output directory (created; must be empty or a previous shapes dataset).
        num_train, num_val: number of images per split.
        image_size: int or (H, W).
        seed: non-negative int.
        objects_per_image: (min, max) objects attempted per image; a few may be skipped when they
            cannot be placed without hiding too much of another.
        texture_contrast: background texture contrast (see render_scene).
        min_size_frac: smallest object diameter as a fraction of the short side.

    Returns:
        dict: kind, root, classes, category_ids {name: id}, image_size [H, W],
        splits {split: {"images": n, "objects": m, "annotations": json path relative to root}}.
    """
    root = Path(root)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
              "objects_per_image": objects_per_image, "texture_contrast": texture_contrast,
              "min_size_frac": min_size_frac}
    _prepare_root(root)
    size = _hw(image_size)
    categories = [{"id": coco_category_id(i), "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    summary = {"kind": "detection", "root": str(root), "classes": list(SHAPE_CLASSES),
               "category_ids": {c["name"]: c["id"] for c in categories}, "image_size": list(size), "splits": {}}
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = root / split / "images"
        image_dir.mkdir(parents=True, exist_ok=True)

        results = _parallel_map("detection", count, split, image_dir=str(image_dir),
                                size=list(size), seed=seed,
                                objects_per_image=list(objects_per_image),
                                min_size_frac=min_size_frac, texture_contrast=texture_contrast)
        images, annotations = [], []
        for image_info, anns in results:  # ids assigned in index order: deterministic
            images.append(image_info)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_info["id"], **ann})
        coco = {
            "info": {"description": "mobilevision synthetic shapes", "version": str(SHAPES_VERSION)},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        ann_path = root / "annotations" / f"instances_{split}.json"
        _write_json_atomic(ann_path, coco)
        summary["splits"][split] = {"images": count, "objects": len(annotations),
                                    "annotations": str(ann_path.relative_to(root))}
    return _finish(root, "detection", params, summary)


def _label_map(objects, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 VOC label map: 0 background, class_id + 1 per object, 255 on a ~2 px band
    along every object boundary (VOC's "void" outline; losses and metrics ignore it)."""
    label = np.zeros((h, w), np.uint8)
    border = np.zeros((h, w), bool)
    kernel = np.ones((3, 3), np.uint8)
    for o in objects:
        mask = o["mask"].astype(np.uint8)
        label[o["mask"]] = o["class_id"] + 1
        border |= cv2.dilate(mask, kernel).astype(bool) & ~cv2.erode(mask, kernel).astype(bool)
    label[border] = IGNORE_LABEL
    return label


def generate_segmentation(root, num_train: int = 1000, num_val: int = 200, image_size=128, seed: int = 0,
                          texture_contrast: float = 1.0) -> dict:
    """Write a PASCAL VOC 2012 style semantic segmentation dataset.

    Layout:
        root/JPEGImages/<id>.jpg                     id = "<split>_<index:06d>"
        root/SegmentationClass/<id>.png              palette ("P") PNG with the VOC colour map;
                                                     0 background, i = SHAPE_CLASSES[i - 1], 255 ignore
        root/ImageSets/Segmentation/{train,val}.txt  one id per line
        root/classes.txt                             "background" then the shape names, one a line

    Args:
        root: output directory (created; must be empty or a previous shapes dataset).
        num_train, num_val: number of images per split.
        image_size: int or (H, W).
        seed: non-negative int.
        texture_contrast: background texture contrast (see render_scene).

    Returns:
        dict: kind, root, classes (background first), num_classes, ignore_label, image_size [H, W],
        splits {split: {"images": n, "objects": m}}.
    """
    root = Path(root)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
              "texture_contrast": texture_contrast}
    _prepare_root(root)
    h, w = _hw(image_size)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    classes = ["background", *SHAPE_CLASSES]
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    summary = {"kind": "segmentation", "root": str(root), "classes": classes, "num_classes": len(classes),
               "ignore_label": IGNORE_LABEL, "image_size": [h, w], "splits": {}}
    for split, count in (("train", num_train), ("val", num_val)):

        results = _parallel_map("segmentation", count, split, root=str(root), size=[h, w],
                                seed=seed, texture_contrast=texture_contrast)
        ids = [r[0] for r in results]
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        summary["splits"][split] = {"images": count, "objects": sum(r[1] for r in results)}
    return _finish(root, "segmentation", params, summary)


GENERATORS = {
    "classification": generate_classification,
    "detection": generate_detection,
    "segmentation": generate_segmentation,
}


def read_manifest(root):
    """The parsed root/shapes.json, or None if it is missing or unreadable."""
    try:
        return json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_shapes(root, kind: str, *, progress: bool = True, **params) -> Path:
    """Generate the shapes dataset of `kind` into `root` unless it is already there.

    Regenerates when root/shapes.json is missing (never generated, or interrupted: the manifest
    is written last) or records a different kind, version or parameter set (defaults filled in, so
    `ensure_shapes(r, "detection")` and `ensure_shapes(r, "detection", seed=0)` are the same).

    Args:
        root: dataset directory.
        kind: "classification", "detection" or "segmentation".
        progress: while generating, print a progress line and then the count and seconds to
            stdout (rewritten in place on a terminal, a line per quarter otherwise).
        **params: keyword arguments of the matching generate_* function (not root).

    Returns:
        Path of root.

    Raises:
        ValueError: unknown kind. TypeError: a parameter the generator does not take.
        FileExistsError: root is a non-empty directory that is not a shapes dataset.
    """
    root = Path(root)
    if kind not in GENERATORS:
        raise ValueError(f"unknown shapes kind {kind!r}; expected one of {sorted(GENERATORS)}")
    generator = GENERATORS[kind]
    signature = inspect.signature(generator)
    unknown = sorted((set(params) - set(signature.parameters)) | ({"root"} & set(params)))
    if unknown:
        valid = [p for p in signature.parameters if p != "root"]
        raise TypeError(f"ensure_shapes({kind!r}): unknown parameter(s) {unknown}; valid: {valid}")
    bound = signature.bind(root, **params)
    bound.apply_defaults()
    resolved = _jsonable({k: v for k, v in bound.arguments.items() if k != "root"})
    if _manifest_matches(root, kind, resolved):
        return root
    # Several processes (multi-worker training, parallel tests) may ask at once: one generates,
    # the others wait and then find a matching manifest.
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / _LOCK_NAME):
        if not _manifest_matches(root, kind, resolved):
            counts = {"train": resolved["num_train"], "val": resolved["num_val"]}
            reporter = _Progress(root, kind, counts) if progress else None
            token = _PROGRESS.set(reporter)
            try:
                generator(root, **resolved)
            except BaseException:
                if reporter is not None:
                    reporter.interrupted()
                raise
            finally:
                _PROGRESS.reset(token)
            if reporter is not None:
                reporter.close()
    return root


def _manifest_matches(root: Path, kind: str, params: dict) -> bool:
    manifest = read_manifest(root)
    return (
        manifest is not None
        and manifest.get("kind") == kind
        and manifest.get("version") == SHAPES_VERSION
        and manifest.get("params") == params
    )


@contextmanager
def _exclusive_lock(path: Path):
    """An advisory inter-process lock (POSIX flock); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_data(cfg) -> None:
    """Generate the synthetic dataset of a config on first use (`data.synthetic: shapes`), in
    the layout its task reads (the generator's kinds are the task names); anything else: nothing
    to do."""
    d = cfg.data
    if d.synthetic == "shapes":
        optional = {k: d.shapes[k] for k in ("texture_contrast", "min_size_frac")
                    if d.shapes[k] is not None}
        ensure_shapes(d.root, cfg.task, num_train=d.shapes.num_train, num_val=d.shapes.num_val,
                      image_size=d.shapes.image_size, seed=d.shapes.seed, **optional)
