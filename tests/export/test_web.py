"""The web page (`mobilevision/export/web`) in a real browser: Debian's headless Chromium, driven
over its DevTools protocol, on the exported folder served from 127.0.0.1.

- The page prepares each image as `predict` does (`predict_input`, mobilevision.inference), its
  pixels rounded to 8 bits.
- Each task's page, float32 and int8, gives on every sample what LiteRT gives in Python on the
  same file fed the same input (`litert_predict`): the same detections (class, box within 2 px,
  score within 0.01), the same label map on at least 99% of the pixels, the same top-1 class
  with scores within 0.01.
- The camera path, fed by Chromium's fake camera from a clip of validation images, processes
  frames and shows their detections.
- Bad input (a file that is not an image, a missing one, a model that does not load, no camera,
  the camera denied, MediaPipe unreachable) shows a one-line message and the page keeps working.
- A screenshot of each task's page (to $MOBILEVISION_WEB_SCREENSHOTS when set, e.g. docs/).

The models are small (MobileNetV2 0.35, 64-96 px) with random weights, exported by
`scripts/export.py` (kept in pytest's cache while the code that makes them is unchanged). A
random head answers the same class everywhere (its class offsets outweigh what the image
changes), which no comparison could tell from a broken page, so the weighted layers that compute
the class outputs are centred and scaled on training images first (`_sharpen`): the answers then
vary over the image and between images. Such a model answers differently to an input a fraction
of a level away (an int8 file by up to 0.08 in a probability for one pixel one level off,
measured), far more than a trained one: so the reference is fed the page's own 8-bit input, and
the first test holds that input to predict's.

Needs Chromium and the pinned `@mediapipe/tasks-vision` (package.json at the repository root);
without them the tests skip, saying how to install them.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mobilevision.export.formats import ExportError
from mobilevision.export.web import MEDIAPIPE_VERSION, find_runtime, write_web_page
from mobilevision.export.web.browser import (INSTALL_HINT, Chromium, find_chromium,
                                             save_screenshot, serve)

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("float32", "int8")
# task -> (config, input size, output whose layers `_sharpen` centres, its logits' spread)
CASES = {
    "detection": ("shapes_ssdlite.yaml", 96, "classes", 1.5),
    "classification": ("shapes_classifier.yaml", 64, None, 2.0),
    "segmentation": ("shapes_deeplabv3.yaml", 64, None, 3.0),
}
DATA = {"data.shapes.num_train": 12, "data.shapes.num_val": 4, "data.shapes.image_size": 128}
EVAL_CROP = 0.875  # classification's page and reference both keep the central 87.5%
BOX_PX, SCORE_TOL, MASK_AGREEMENT = 2.0, 0.01, 0.99
TIE = 2e-3  # how far from a half predict's float rounding may put a pixel value
SCREENSHOT_BYTES = 300_000


def _missing() -> str | None:
    """What the browser tests lack, as one line, or None."""
    lacks = []
    if find_chromium() is None:
        lacks.append(f"Chromium ({INSTALL_HINT})")
    try:
        package, _ = find_runtime()
    except ExportError:
        package = None
    if package is None:
        lacks.append(f"@mediapipe/tasks-vision {MEDIAPIPE_VERSION} (npm ci, in {ROOT})")
    return ("web page tests need " + " and ".join(lacks)) if lacks else None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


# The Python reference -------------------------------------------------------------------------

def predict_input(task: str, image: np.ndarray, size: tuple[int, int],
                  eval_crop: float = EVAL_CROP) -> np.ndarray:
    """What `predict` feeds a file for one image (H, W, 3) uint8 RGB: (h, w, 3) float32 pixels
    at the input size `size` (mobilevision.inference: detection stretches the image; the
    classifier keeps the central `eval_crop` and resizes it antialiased; the segmenter fits the
    image in, keeping its aspect, and pads with 127.5)."""
    from mobilevision.inference import PREPARE

    return PREPARE[task](image, tuple(size), crop=eval_crop)


def litert_predict(path, task: str, image: np.ndarray, x: np.ndarray, labels: list[str]) -> dict:
    """predict's JSON for one image (H, W, 3) uint8 RGB from an exported .tflite file in LiteRT,
    the file fed `x`, the (h, w, 3) uint8 input the page handed MediaPipe (`predict_input`'s
    pixels rounded; `test_page_prepares_images_as_predict` holds it to them), its outputs turned
    into results as `predict` turns them (mobilevision.inference):

    detection -> {"detections": [{"class", "label", "score", "bbox" [x, y, w, h] pixels}]}, the
      boxes clipped to the image (the file clips them already)
    classification -> {"predictions": [{"class", "class_id", "score"}] (top 5)}
    segmentation -> {"size": [h, w], "classes": {name: fraction}}, the probabilities of the
      image's part resized back to the image (cv2 bilinear) and their argmax; the label map
      under "_label".

    Fed the same 8-bit pixels, not predict's unrounded ones: these random test models answer a
    change of a fraction of a level in every pixel by up to 0.09 in a probability (a trained
    model does not; docs/web.md has the demos' figures against `predict` itself)."""
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    from mobilevision.inference import fitted_size

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    out = {k: np.asarray(v) for k, v in runner(**{name: x[None].astype(detail["dtype"])}).items()}
    h, w = image.shape[:2]
    if task == "detection":
        n = int(out["count"][0])
        boxes = np.clip(out["boxes"][0, :n], 0.0, 1.0)[:, [1, 0, 3, 2]] * [w, h, w, h]
        dets = [{"class": labels[int(k)], "label": int(k) + 1, "score": float(s),
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
                for (x0, y0, x1, y1), s, k in zip(boxes, out["scores"][0, :n],
                                                  out["classes"][0, :n])]
        return {"detections": sorted(dets, key=lambda d: -d["score"])}
    if task == "classification":
        probs = out["probabilities"][0]
        return {"predictions": [{"class": labels[i], "class_id": int(i), "score": float(probs[i])}
                                for i in np.argsort(-probs, kind="stable")[:5]]}
    nh, nw = fitted_size((h, w), x.shape[:2])
    probs = np.ascontiguousarray(out["scores"][0, :nh, :nw], np.float32)
    if (nh, nw) != (h, w):
        probs = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    label = probs.argmax(-1)
    counts = np.bincount(label.reshape(-1), minlength=len(labels))
    return {"size": [h, w], "_label": label,
            "classes": {labels[i]: round(float(c) / label.size, 6)
                        for i, c in enumerate(counts) if c}}


def page_input(page, name: str, size) -> tuple[np.ndarray, np.ndarray, int]:
    """The page's view of image `name`: (its decoded pixels, the (h, w, 3) uint8 input it hands
    MediaPipe at the input size `size`, the factor k a detector's input is enlarged by; the
    input's every k-th pixel)."""
    import base64

    got = page.evaluate(f"mobilevisionPage.pixels({json.dumps(name)})")
    image = np.frombuffer(base64.b64decode(got["image"]["rgb"]), np.uint8).reshape(
        got["image"]["height"], got["image"]["width"], 3)
    x = np.frombuffer(base64.b64decode(got["input"]["rgb"]), np.uint8).reshape(
        got["input"]["height"], got["input"]["width"], 3)
    k = x.shape[0] // size[0]
    assert x.shape == (size[0] * k, size[1] * k, 3), (x.shape, size)
    small = np.ascontiguousarray(x[::k, ::k])
    assert np.array_equal(x, np.repeat(np.repeat(small, k, 0), k, 1)), "not k x k blocks"
    return image, small, k


def read_rgb(path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# Comparisons ------------------------------------------------------------------------------------

def compare_detections(want: list, got: list) -> dict:
    """Pair each reference detection with an unused page detection of the same class, corners
    within BOX_PX and score within SCORE_TOL (the closest box). A detection may go unpaired only
    at the file's cut: within SCORE_TOL of the lowest score either list kept, where a rounding
    difference decides whether it makes the list. -> figures and the unpaired ones. (MediaPipe
    bounds a box's origin to the image but keeps its width and height: a file whose boxes were
    not clipped would fail here at the left and top edges.)"""
    cut = max(min((d["score"] for d in want), default=1.0),
              min((d["score"] for d in got), default=1.0)) + SCORE_TOL
    unused = list(range(len(got)))
    box_diff = score_diff = 0.0
    unpaired = []
    for d in want:
        corners = _corners(d["bbox"])
        best = None
        for j in unused:
            g = got[j]
            if g["class"] != d["class"] or abs(g["score"] - d["score"]) > SCORE_TOL:
                continue
            diff = float(np.abs(_corners(g["bbox"]) - corners).max())
            if diff <= BOX_PX and (best is None or diff < best[1]):
                best = (j, diff)
        if best is None:
            unpaired.append(("reference", d))
            continue
        unused.remove(best[0])
        box_diff = max(box_diff, best[1])
        score_diff = max(score_diff, abs(got[best[0]]["score"] - d["score"]))
    unpaired += [("page", got[j]) for j in unused]
    bad = [u for u in unpaired if u[1]["score"] > cut]
    return {"detections": len(want), "paired": len(want) - sum(u[0] == "reference"
                                                               for u in unpaired),
            "max_box_px": box_diff, "max_score_diff": score_diff, "unpaired": unpaired,
            "bad": bad}


def _corners(bbox) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], np.float64)


def decode_rle(mask: dict) -> np.ndarray:
    """The page's label map: {"size": [h, w], "rle": [value, count, ...]} -> (h, w) array."""
    values, counts = np.asarray(mask["rle"][0::2]), np.asarray(mask["rle"][1::2])
    return np.repeat(values, counts).reshape(mask["size"])


# Models and pages -------------------------------------------------------------------------------

def _sharpen(model, images, output, spread: float) -> list[str]:
    """Centre each output channel of the weighted layers computing `output` (None: the model's
    one output), reached back through weightless layers (reshape, concatenate, upsampling), on
    `images` and scale it to a spread of about `spread`: a random model whose answers vary with
    the image. Returns the layers' names."""
    import keras

    def sources(tensor):
        op, node_index, _ = tensor._keras_history
        if op.weights:
            return [op]
        found = []
        for t in op._inbound_nodes[node_index].input_tensors:
            found += [layer for layer in sources(t) if layer not in found]
        return found

    tensors = [model.output[output]] if output else list(model.outputs)
    layers = [layer for t in tensors for layer in sources(t)]
    for layer in layers:
        x = keras.Model(model.inputs, layer.input)([images])
        activation, layer.activation = layer.activation, keras.activations.linear
        y = np.asarray(layer(x)).reshape(-1, layer.output.shape[-1])
        layer.activation = activation
        kernel, bias = layer.get_weights()
        scale = spread / max(float(y.std(0).mean()), 1e-30)
        layer.set_weights([kernel * scale, (bias - y.mean(0)) * scale])
    return [layer.name for layer in layers]


def _overrides(task: str, data_root: Path) -> list[str]:
    _, size, _, _ = CASES[task]
    return ["model.backbone.alpha=0.35", f"model.input_size=[{size},{size}]",
            f"data.root={data_root}", *(f"{k}={v}" for k, v in DATA.items())]


def _random_weights(task: str, data_root: Path, path: Path, randomize_batchnorm) -> None:
    """A random model of the task's config (`_overrides`) with non-identity BatchNorm and
    sharpened outputs, saved to `path`; the config's shapes data generated into data_root."""
    import keras

    import mobilevision as mv
    from mobilevision.data.shapes import prepare_data

    config, size, output, spread = CASES[task]
    cfg = mv.load_config(config, overrides=_overrides(task, data_root))
    prepare_data(cfg)
    keras.utils.set_random_seed(3)
    model = mv.build_model(cfg)
    randomize_batchnorm(model, (size, size, 3), seed=3)
    images = np.stack([np.asarray(_resized(p, size), np.float32)
                       for p in _images(data_root, "train")[:8]])
    _sharpen(model, images, output, spread)
    model.save_weights(path)


def _resized(path, size):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").resize((size, size), Image.BILINEAR)


def _images(data_root: Path, split: str) -> list[Path]:
    """The images of one split of a shapes dataset (COCO, class folders or VOC layout)."""
    found = [p for p in data_root.rglob("*") if p.suffix in (".jpg", ".png")
             and "SegmentationClass" not in p.parts
             and (split in p.parts or p.name.startswith(f"{split}_"))]
    return sorted(found)


def _samples(task: str, data_root: Path, out: Path) -> list[Path]:
    """Three validation images as they are (128 px square, JPEG), and two derived ones of other
    shapes and formats: wide PNG, tall odd-sized JPEG (stretching, cropping and letterboxing
    differ on them)."""
    from PIL import Image

    val = _images(data_root, "val")[:3]
    out.mkdir(parents=True, exist_ok=True)
    with Image.open(val[0]) as im:
        wide = out / f"{task}_wide.png"
        im.convert("RGB").crop((0, 20, 128, 100)).resize((150, 94), Image.BICUBIC).save(wide)
    with Image.open(val[1]) as im:
        tall = out / f"{task}_tall.jpg"
        im.convert("RGB").crop((10, 0, 101, 128)).save(tall, quality=92)
    return [*val, wide, tall]


def _source_key(*extra: str) -> str:
    """A digest of everything the exported test models depend on: the package's code (but this
    page's, which does not make them), the configs, the export command, the versions of
    TensorFlow and Keras, and `extra`."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256()
    files = sorted([*ROOT.glob("mobilevision/**/*.py"), *ROOT.glob("configs/*.yaml"),
                    ROOT / "scripts" / "export.py"])
    for path in files:
        if "web" not in path.relative_to(ROOT).parts:
            digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    for name in ("tensorflow", "keras", "ai-edge-litert"):
        digest.update(f"{name}={version(name)}".encode())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory, randomize_batchnorm):
    """{task: {"models": {variant: path}, "labels", "data": data root}}: each task's random
    model exported by `scripts/export.py` (float32 and int8; the three exports run side by side,
    about 2 minutes on 2 idle cores).

    Kept in pytest's cache under a digest of the code and settings that make them
    (`_source_key`), so a later run of these tests with the same code reuses them; any change
    to the package, the configs or this recipe exports them anew (`pytest --cache-clear` too)."""
    import inspect
    import shutil

    key = _source_key(repr(CASES), repr(DATA), inspect.getsource(_sharpen),
                      inspect.getsource(_random_weights))
    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir("mobilevision_web_models"))
    else:  # pytest -p no:cacheprovider: made anew, in this run's temporary folder
        cache = tmp_path_factory.mktemp("mobilevision_web_models")
    folder = cache / key
    if not (folder / "done").exists():
        build = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
        procs = {}
        for task, (config, *_rest) in CASES.items():
            data = build / f"data_{task}"
            weights = build / f"{task}.weights.h5"
            _random_weights(task, data, weights, randomize_batchnorm)
            procs[task] = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "export.py"), "--config", config,
                 "--weights", str(weights), "--format", "web",
                 "--calibration-images", "8", "--output", str(build / f"export_{task}"),
                 *_overrides(task, data)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        for task, proc in procs.items():
            log, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, log[-3000:]
        (build / "done").write_text(key)
        for old in cache.iterdir():  # one set of models is enough
            if old.name != build.name:
                shutil.rmtree(old, ignore_errors=True)
        build.rename(folder)
    out = {}
    for task in CASES:
        export = folder / f"export_{task}"
        # `--format web` writes the page and the two files it runs (the tests below write
        # their own pages of these files, with samples they choose).
        web = export / "web"
        assert (web / "index.html").is_file() and (web / "labels.txt").is_file()
        assert {p.name for p in web.glob("*.tflite")} == {p.name for p in export.glob("*.tflite")}
        assert len(list((web / "samples").iterdir())) == 4
        out[task] = {
            "models": {"float32": next(p for p in export.glob("*.tflite") if "_int8" not in p.name),
                       "int8": next(export.glob("*_int8.tflite"))},
            "labels": (export / "labels.txt").read_text().split(),
            "data": folder / f"data_{task}"}
    return out


@pytest.fixture(scope="module")
def pages(exported, tmp_path_factory):
    """{task: {"dir": page folder, "models", "labels", "info": write_web_page's answer,
    "samples": [paths in the folder]}}: each task's exported models written as a web page with
    five samples."""
    tmp = tmp_path_factory.mktemp("web")
    out = {}
    for task, e in exported.items():
        samples = _samples(task, e["data"], tmp / "samples")
        page = tmp / f"page_{task}"
        info = write_web_page(page, task=task, labels=e["labels"], models=e["models"],
                              samples=samples, name=CASES[task][0].removesuffix(".yaml"),
                              eval_crop=EVAL_CROP)
        assert info["runtime"] == "local", info
        out[task] = {**e, "dir": page, "info": info,
                     "samples": [f for f in info["files"] if f.startswith("samples/")]}
    return out


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


def _open(browser, url: str, timeout: float = 60.0):
    """A new tab at `url`, waited for until the page says it is done (?image= runs)."""
    page = browser.new_page(1100, 720)
    page.goto(url)
    page.wait_for("document.body.dataset.done === '1'", timeout=timeout)
    return page


def _results(page) -> dict:
    return json.loads(page.read_text("document.getElementById('results').textContent"))


def _message(page) -> str | None:
    """The message line's text when it is shown, else None."""
    return page.evaluate("(m => m.hidden ? null : m.textContent)"
                         "(document.getElementById('message'))")


# The page prepares images as predict does --------------------------------------------------------

@needs_browser
@pytest.mark.parametrize("task", list(CASES))
def test_page_prepares_images_as_predict(pages, browser, task):
    """The pixels the page hands MediaPipe are `predict_input`'s rounded to 8 bits, for the
    samples and for noise images of odd sizes, smaller and larger than the input: within half a
    level everywhere, and rounded the other way only where predict's value is a half (up to
    float rounding, which OpenCV's IPP kernels do their own way). (A detector's input is handed
    over enlarged by a whole factor, each pixel a block.)"""
    from PIL import Image

    p = pages[task]
    rng = np.random.default_rng(1)
    names = list(p["samples"])
    for h, w in [(37, 53), (30, 40), (97, 95), (131, 200), (480, 640)]:
        name = f"noise/{h}x{w}.png"
        (p["dir"] / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p["dir"] / name)
        names.append(name)
    size = (CASES[task][1],) * 2
    rounded_differently = values = 0
    with serve(p["dir"]) as url:
        page = browser.new_page()
        page.goto(f"{url}/index.html")
        page.wait_for("window.mobilevisionPage")
        for name in names:
            image, x, _ = page_input(page, name, size)
            original = read_rgb(p["dir"] / name)
            assert np.array_equal(image, original), f"{name}: decoded differently"
            want = predict_input(task, original, size).astype(np.float64)
            diff = np.abs(x - want)
            assert diff.max() <= 0.5 + TIE, f"{name}: {diff.max()} levels from predict's"
            # Rounded the other way only where predict's value is a half, give or take float
            # rounding (a 4:3 resize makes halves of a third of its pixels).
            other = x != np.round(want)
            halves = np.abs(want[other] - np.floor(want[other]) - 0.5)
            assert (halves <= TIE).all(), f"{name}: {want[other][halves > TIE][:5]} -> " \
                                          f"{x[other][halves > TIE][:5]}"
            rounded_differently += int(other.sum())
            values += x.size
        page.close()
    print(f"\ninput {task}: {values} values, {rounded_differently} halves rounded the other way")


# The page equals LiteRT -------------------------------------------------------------------------

PARITY = {}  # (task, variant) -> figures, printed at the end of each test


@needs_browser
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", list(CASES))
def test_page_gives_litert_results(pages, browser, task, variant):
    p = pages[task]
    figures = {"images": 0, "max_box_px": 0.0, "max_score_diff": 0.0, "min_mask_agreement": 1.0,
               "top1_same": 0, "detections": 0, "paired": 0}
    with serve(p["dir"]) as url:
        for sample in p["samples"]:
            page = _open(browser, f"{url}/index.html?image={sample}&model={variant}")
            try:
                got = _results(page)
                assert "error" not in got and _message(page) is None, (got, page.console_tail())
                mask = page.read_text("document.getElementById('mask').textContent")
                image, x, _ = page_input(page, sample, (CASES[task][1],) * 2)
            finally:
                page.close()
            want = litert_predict(p["models"][variant], task, image, x, p["labels"])
            assert got["file"] == sample
            figures["images"] += 1
            if task == "detection":
                c = compare_detections(want["detections"], got["detections"])
                assert not c["bad"], f"{sample}: unpaired detections {c['bad'][:4]}"
                assert c["detections"] > 0 and c["paired"] >= 0.9 * c["detections"], c
                for key in ("detections", "paired"):
                    figures[key] += c[key]
                figures["max_box_px"] = max(figures["max_box_px"], c["max_box_px"])
                figures["max_score_diff"] = max(figures["max_score_diff"], c["max_score_diff"])
            elif task == "classification":
                w, g = want["predictions"], got["predictions"]
                assert [x["class"] for x in g] and len(g) == len(w)
                scores = {x["class_id"]: x["score"] for x in g}
                diff = max(abs(scores[x["class_id"]] - x["score"]) for x in w)
                assert diff <= SCORE_TOL, (sample, w, g)
                # Equal scores may sort either way: a different top-1 only within the tolerance.
                same = g[0]["class_id"] == w[0]["class_id"]
                assert same or abs(scores[w[0]["class_id"]] - g[0]["score"]) <= SCORE_TOL
                assert g[0]["class"] == p["labels"][g[0]["class_id"]]
                figures["top1_same"] += same
                figures["max_score_diff"] = max(figures["max_score_diff"], diff)
            else:
                label = decode_rle(json.loads(mask))
                assert got["size"] == want["size"] == list(label.shape)
                agreement = float((label == want["_label"]).mean())
                assert agreement >= MASK_AGREEMENT, (sample, agreement)
                fractions = {n: abs(got["classes"].get(n, 0) - want["classes"].get(n, 0))
                             for n in set(got["classes"]) | set(want["classes"])}
                assert max(fractions.values()) <= 1 - MASK_AGREEMENT, fractions
                figures["min_mask_agreement"] = min(figures["min_mask_agreement"], agreement)
    PARITY[task, variant] = figures
    print(f"\nparity {task} {variant}: {json.dumps(figures)}")


@needs_browser
def test_answers_vary_between_images(pages, browser):
    """The models are not trivial: different samples get different answers on the page (so
    the parity above is not that of constant outputs)."""
    seen = {}
    with serve(pages["segmentation"]["dir"]) as url:
        for sample in pages["segmentation"]["samples"][:2]:
            page = _open(browser, f"{url}/index.html?image={sample}")
            seen[sample] = _results(page)["classes"]
            page.close()
    first, second = seen.values()
    assert len(first) > 1 and first != second, seen


# The camera --------------------------------------------------------------------------------------

def write_y4m(path: Path, images: list, size=(320, 240), fps: int = 10, repeat: int = 5) -> None:
    """A YUV4MPEG2 clip (4:2:0) of the images, each shown `repeat` frames: what Chromium's fake
    camera plays (in a loop)."""
    import cv2

    w, h = size
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in images:
            frame = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            yuv = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes()
            for _ in range(repeat):
                f.write(b"FRAME\n" + yuv)


@needs_browser
def test_camera_shows_detections_of_each_frame(pages, tmp_path):
    p = pages["detection"]
    clip = tmp_path / "clip.y4m"
    write_y4m(clip, [read_rgb(p["dir"] / s) for s in p["samples"][:3]])
    args = ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
            "--use-fake-ui-for-media-stream"]
    with serve(p["dir"]) as url, Chromium(args=args) as browser:
        page = browser.new_page(1100, 720)
        page.goto(f"{url}/index.html")
        page.wait_for("document.getElementById('results').textContent.length > 0")
        page.evaluate("document.getElementById('camera').click()")
        page.wait_for("Number(document.body.dataset.frames || 0) >= 3", timeout=60)
        seen = []
        for _ in range(12):  # the clip shows a new image every half second
            page.wait_for(f"Number(document.body.dataset.frames) > "
                          f"{page.evaluate('Number(document.body.dataset.frames)')}")
            r = _results(page)
            seen.append(json.dumps(r["detections"][:3]))
            assert r["file"].startswith("camera frame"), r
            assert all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 320 + 1e-6
                       and 0 <= d["bbox"][1] and d["bbox"][1] + d["bbox"][3] <= 240 + 1e-6
                       for d in r["detections"]), r
        timing = page.evaluate("document.getElementById('timing').textContent")
        shown = page.evaluate("document.querySelectorAll('#detections li').length")
        size = page.evaluate("[document.getElementById('canvas').width, "
                             "document.getElementById('canvas').height]")
        assert _message(page) is None, _message(page)
        page.evaluate("document.getElementById('camera').click()")  # stop
    assert "fps" in timing and float(timing.split(" · ")[-1].split()[0]) > 0, timing
    assert shown > 0, "no detection drawn on the camera frame"
    assert size == [512, 384], size  # 320 x 240 frames, enlarged to draw on
    assert len(set(seen)) > 1, "every frame got the same detections"


# Bad input ---------------------------------------------------------------------------------------

@needs_browser
def test_bad_image_shows_a_message_and_the_page_keeps_working(pages, browser):
    p = pages["classification"]
    (p["dir"] / "notes.jpg").write_text("not a picture\n")
    with serve(p["dir"]) as url:
        page = _open(browser, f"{url}/index.html?image=notes.jpg")
        assert "notes.jpg is not an image" in _message(page)
        assert _results(page) == {"file": "notes.jpg",
                                  "error": "notes.jpg is not an image this browser can decode"}
        page.evaluate("document.querySelector('#samples img').click()")
        page.wait_for("!JSON.parse(document.getElementById('results').textContent).error")
        assert _message(page) is None
        assert len(_results(page)["predictions"]) == 5
        page.close()
        page = _open(browser, f"{url}/index.html?image=missing.png")
        assert _message(page) == "could not fetch missing.png: HTTP 404"
        page.close()


@needs_browser
def test_model_that_fails_to_load_shows_a_message(pages, browser, tmp_path):
    p = pages["detection"]
    folder = tmp_path / "page"
    write_web_page(folder, task="detection", labels=p["labels"], models=p["models"],
                   samples=[p["dir"] / s for s in p["samples"][:1]], name="broken")
    broken = folder / p["models"]["int8"].name
    broken.write_bytes(b"TFL3" * 64)
    sample = p["samples"][0]
    with serve(folder) as url:
        page = _open(browser, f"{url}/index.html?model=int8&image={sample}")
        message = _message(page)
        assert message.startswith(f"could not load the int8 model {broken.name}"), message
        assert "\n" not in message
        assert "error" in _results(page)
        # The float32 model still runs: the switch loads it and runs the image again.
        page.evaluate("document.getElementById('results').textContent = ''")
        page.evaluate("document.querySelector('input[value=float32]').click()")
        page.wait_for("document.getElementById('results').textContent.length > 0")
        assert _message(page) is None
        assert _results(page)["detections"]
        page.close()


@needs_browser
def test_camera_absent_shows_a_message(pages, browser):
    """This browser has no camera at all."""
    with serve(pages["detection"]["dir"]) as url:
        page = browser.new_page()
        page.goto(f"{url}/index.html")
        page.wait_for("document.getElementById('results').textContent.length > 0")
        page.evaluate("document.getElementById('camera').click()")
        page.wait_for("!document.getElementById('message').hidden")
        assert _message(page) == "No camera found"
        assert page.evaluate("document.getElementById('camera').textContent") == "Camera"
        page.close()


@needs_browser
def test_camera_denied_shows_a_message_and_granted_runs(pages, tmp_path):
    p = pages["detection"]
    clip = tmp_path / "clip.y4m"
    write_y4m(clip, [read_rgb(p["dir"] / p["samples"][0])], repeat=2)
    args = ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"]
    with serve(p["dir"]) as url, Chromium(args=args) as browser:
        browser.set_permission("camera", "denied", url)
        page = browser.new_page()
        page.goto(f"{url}/index.html")
        page.wait_for("document.getElementById('results').textContent.length > 0")
        page.evaluate("document.getElementById('camera').click()")
        page.wait_for("!document.getElementById('message').hidden")
        assert _message(page) == ("Camera permission denied: allow the camera for this page "
                                  "and try again")
        browser.set_permission("camera", "granted", url)
        page.evaluate("document.getElementById('camera').click()")
        page.wait_for("Number(document.body.dataset.frames || 0) >= 2")
        assert _message(page) is None
        page.evaluate("document.getElementById('camera').click()")
        page.close()


@needs_browser
def test_page_without_local_runtime_uses_the_pinned_cdn(pages, tmp_path, monkeypatch):
    """No @mediapipe/tasks-vision to copy: the page loads the pinned version from jsdelivr, and
    where that is unreachable (here: every host but 127.0.0.1) it says so."""
    import mobilevision.export.web as web

    p = pages["classification"]
    monkeypatch.setattr(web, "find_runtime", lambda runtime_dir=None: (None, ""))
    info = write_web_page(tmp_path, task="classification", labels=p["labels"],
                          models=p["models"], samples=[], name="cdn")
    assert info["runtime"] == "cdn" and not (tmp_path / "mediapipe").exists()
    cdn = f"https://cdn.jsdelivr.net/npm/@mediapipe/tasks-vision@{MEDIAPIPE_VERSION}"
    assert info["runtime_source"] == cdn
    offline = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
    (tmp_path / "a.png").write_bytes((p["dir"] / p["samples"][0]).read_bytes())
    with serve(tmp_path) as url, Chromium(args=offline) as browser:
        page = _open(browser, f"{url}/index.html?image=a.png")
        assert _message(page) == f"could not load MediaPipe Tasks from {cdn}/vision_bundle.js"
        page.close()


# Screenshots -------------------------------------------------------------------------------------

@needs_browser
@pytest.mark.parametrize("task", list(CASES))
def test_screenshot(pages, browser, task, tmp_path):
    """The page as a user first sees it (its first sample run), saved as a PNG under 300 kB."""
    out = Path(os.environ.get("MOBILEVISION_WEB_SCREENSHOTS") or tmp_path)
    with serve(pages[task]["dir"]) as url:
        path = save_screenshot(browser, f"{url}/index.html", out / f"web_{task}.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) <= SCREENSHOT_BYTES, len(data)
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 720)
    from PIL import Image

    with Image.open(path) as im:  # the drawn image, not a blank page: many colours in use
        assert len(im.getcolors(256)) > 64


# The writer --------------------------------------------------------------------------------------

@needs_browser  # the fixture's pages need the npm package
def test_writer_refuses_what_does_not_fit(pages, tmp_path):
    p = pages["classification"]
    models, labels = p["models"], p["labels"]
    kw = dict(task="classification", labels=labels, models=models, samples=[], name="x")
    with pytest.raises(ExportError, match="task 'pose'"):
        write_web_page(tmp_path, **{**kw, "task": "pose"})
    with pytest.raises(ExportError, match=r"packed labels.txt .* differ from labels"):
        write_web_page(tmp_path, **{**kw, "labels": labels[::-1]})
    with pytest.raises(ExportError, match="expected keys float32 and/or int8, got.*fp16"):
        write_web_page(tmp_path, **{**kw, "models": {"fp16": models["float32"]}})
    with pytest.raises(ExportError, match=r"models\['int8'\] .*none.tflite: no such file"):
        write_web_page(tmp_path, **{**kw, "models": {"int8": tmp_path / "none.tflite"}})
    text = tmp_path / "a.tflite"
    text.write_text("hello")
    with pytest.raises(ExportError, match=r"a.tflite: not a TFLite file"):
        write_web_page(tmp_path, **{**kw, "models": {"int8": text}})
    with pytest.raises(ExportError, match=r"input_size \(32, 32\) differs .* \(64, 64\)"):
        write_web_page(tmp_path, **kw, input_size=(32, 32))
    with pytest.raises(ExportError, match="samples: .*labels.txt: expected an image"):
        write_web_page(tmp_path, **{**kw, "samples": [p["dir"] / "labels.txt"]})
    old = tmp_path / "mp"
    old.mkdir()
    (old / "package.json").write_text('{"version": "0.10.3"}')
    with pytest.raises(ExportError, match=f"0.10.3, but the page is written for "
                                          f"{MEDIAPIPE_VERSION}"):
        write_web_page(tmp_path, **kw, runtime_dir=old)
    assert not (tmp_path / "index.html").exists()  # nothing half-written points anywhere


def test_package_json_pins_the_page_version():
    """The npm install that CI and the tests use is the version the page is written for."""
    package = json.loads((ROOT / "package.json").read_text())
    assert package["dependencies"] == {"@mediapipe/tasks-vision": MEDIAPIPE_VERSION}
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@mediapipe/tasks-vision"]["version"] == MEDIAPIPE_VERSION


@needs_browser
def test_writer_writes_a_self_contained_folder(pages):
    p = pages["detection"]
    info = p["info"]
    folder = p["dir"]
    assert set(info["files"]) >= {"index.html", "app.js", "style.css", "labels.txt",
                                  p["models"]["float32"].name, p["models"]["int8"].name,
                                  "mediapipe/vision_bundle.js",
                                  "mediapipe/wasm/vision_wasm_internal.wasm"}
    assert all((folder / f).is_file() for f in info["files"])
    assert info["bytes"] == sum((folder / f).stat().st_size for f in info["files"])
    html = (folder / "index.html").read_text()
    config = json.loads(html.split('id="config">')[1].split("</script>")[0])
    from mobilevision.plots import palette

    # Detection's class k is drawn as label k + 1, in predict's colours.
    assert config["colours"] == palette()[:len(p["labels"]) + 1].tolist()
    assert config["models"] == {v: m.name for v, m in p["models"].items()}
    assert config["inputSize"] == [96, 96] and config["runtime"]["kind"] == "local"
    assert (folder / "labels.txt").read_text().split() == p["labels"]
    package = json.loads((folder / "mediapipe/package.json").read_text())
    assert package["version"] == MEDIAPIPE_VERSION
