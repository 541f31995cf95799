"""The web page: an exported model running in the browser with MediaPipe Tasks for Web.

`write_web_page(out_dir, task=..., labels=..., models=..., samples=..., name=...)` writes a
folder an app developer can host as it is (`python -m http.server -d OUT_DIR`):

    index.html            the page, with the facts below baked into it as JSON (id="config")
    app.js, style.css     its script and stylesheet (static files of this package)
    <model>.tflite        the float32 and int8 files (TFLite Metadata: labels, normalization)
    labels.txt            the class names, one a line
    samples/<file>        a few images to try
    mediapipe/            MediaPipe Tasks Vision's script and wasm files, when an installed
                          `@mediapipe/tasks-vision` of the pinned version was found; otherwise
                          the page loads that version from its public CDN (jsdelivr)

The page runs the task on a picked or dropped image, the samples or the camera; float32 or int8
is a switch. It prepares each image as `predict` does (detection: the whole image stretched to
the input, bilinear; classification: the central `eval_crop` of each side, resized with
antialiasing; segmentation: fitted into the input keeping its aspect, padded bottom and right
with grey, the probabilities of the valid part mapped back to the image bilinearly) and hands
MediaPipe an image of exactly the model's input size, so MediaPipe's own resizing changes
nothing. `index.html?image=URL[&model=int8]` runs that one image and writes `predict`'s JSON for
it into `<script type="application/json" id="results">` (segmentation: the label map,
run-length encoded, into id="mask"), then sets `data-done="1"` on <body>: the hook the tests use.

The colours are `plots.palette()`'s, the ones `predict`'s pictures use, read at export time.
Nothing here builds or converts a model: it receives the exported files and the facts about
them. `browser.py` beside this drives a headless Chromium over its DevTools protocol (tests,
benchmarks).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from mobilevision.export.formats import ExportError

# The one pin of MediaPipe Tasks for Web: the npm package the export copies its runtime from,
# and the version the page loads from the CDN otherwise.
MEDIAPIPE_PACKAGE = "@mediapipe/tasks-vision"
MEDIAPIPE_VERSION = "1.1.0"
CDN_ROOT = f"https://cdn.jsdelivr.net/npm/{MEDIAPIPE_PACKAGE}@{MEDIAPIPE_VERSION}"
# What the page needs of the package: its classic-script bundle (sets window.Vision; any web
# server serves .js with a JavaScript MIME type, unlike .mjs) and the wasm runtime, with and
# without SIMD (FilesetResolver picks one by what the browser supports).
RUNTIME_FILES = ("vision_bundle.js", "wasm/vision_wasm_internal.js",
                 "wasm/vision_wasm_internal.wasm", "wasm/vision_wasm_nosimd_internal.js",
                 "wasm/vision_wasm_nosimd_internal.wasm", "package.json")
RUNTIME_DIR = "mediapipe"  # where the copy goes in the page's folder

TASKS = ("detection", "classification", "segmentation")
VARIANTS = ("float32", "int8")
ASSETS = ("app.js", "style.css")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_CONFIG_MARK = "{{CONFIG_JSON}}"
_TITLE_MARK = "{{TITLE}}"


def write_web_page(out_dir, *, task: str, labels: list[str], models: dict, samples: list,
                   name: str, runtime_dir=None, draw_threshold: float = 0.3,
                   input_size: tuple[int, int] | None = None, eval_crop: float = 0.875) -> dict:
    """Write the web page folder for one exported model.

    Args:
      out_dir: the folder to write (created; files of the same names are replaced).
      task: "detection", "classification" or "segmentation".
      labels: class names by class index, as in labels.txt (detection: without background;
        segmentation: background first).
      models: {"float32": path, "int8": path} (one of them may be left out): .tflite files with
        TFLite Metadata whose packed label file equals `labels`.
      samples: image files to bundle as samples (jpg, png, bmp, gif, webp); may be empty.
      name: the model's name, shown as the page's title (e.g. the config's name).
      runtime_dir: an installed `@mediapipe/tasks-vision` (its folder, or a folder holding
        node_modules/@mediapipe/tasks-vision). None: look in ./node_modules, then in this
        repository's node_modules; found nowhere, the page uses the CDN.
      draw_threshold: detection: boxes scoring at least this are drawn (all are in the JSON).
      input_size: (height, width) of the models' input; None: read from their metadata (given,
        it must equal the metadata's).
      eval_crop: classification: the central fraction of each side kept (data.eval_crop).

    Returns {"path": index.html, "runtime": "local" | "cdn", "runtime_source": the package
    folder copied or the CDN URL, "runtime_note": why the CDN when a package was found but not
    used ("" otherwise), "mediapipe_version", "files": [paths relative to out_dir], "bytes"}.

    Raises ExportError naming the argument or file that does not fit (unknown task, a model that
    is not a TFLite file with metadata, labels that differ from the model's, a missing sample, a
    runtime_dir without the pinned package ...).
    """
    from mobilevision.export.metadata import read_metadata
    from mobilevision.plots import palette
    from mobilevision.utils import atomic_write_bytes, atomic_write_text

    if task not in TASKS:
        raise ExportError(f"task {task!r}: the web page runs {', '.join(TASKS)}")
    labels = [str(x) for x in labels]
    if not labels or any(not x.strip() or "\n" in x for x in labels):
        raise ExportError(f"labels: expected a non-empty list of one-line class names, got "
                          f"{labels[:5]!r}")
    unknown = sorted(set(models) - set(VARIANTS))
    if unknown or not models:
        raise ExportError(f"models: expected keys {' and/or '.join(VARIANTS)}, got "
                          f"{sorted(models) or 'none'}")
    if not 0.0 < eval_crop <= 1.0:
        raise ExportError(f"eval_crop {eval_crop}: expected a fraction in (0, 1]")

    # Each model: a TFLite file with metadata, the same labels, one input size for all.
    sizes = {}
    for variant, path in models.items():
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"models[{variant!r}] {path}: no such file")
        try:
            meta = read_metadata(path.read_bytes())
        except ExportError as e:
            raise ExportError(f"models[{variant!r}] {path}: {e}") from e
        packed = meta["associated_files"].get("labels.txt", "").splitlines()
        if packed != labels:
            raise ExportError(f"models[{variant!r}] {path}: its packed labels.txt {packed[:5]} "
                              f"... differ from labels {labels[:5]} ...")
        width, height = (meta["inputs"][0].get("default_size") or [None, None])
        sizes[variant] = (height, width)
    if len(set(sizes.values())) != 1 or None in next(iter(sizes.values())):
        raise ExportError(f"models: input sizes (h, w) {sizes}: expected one known size")
    model_size = next(iter(sizes.values()))
    if input_size is not None and tuple(input_size) != model_size:
        raise ExportError(f"input_size {tuple(input_size)} differs from the models' input "
                          f"{model_size} (their metadata)")
    sample_paths = [Path(p) for p in samples]
    for p in sample_paths:
        if not p.is_file():
            raise ExportError(f"samples: {p}: no such file")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ExportError(f"samples: {p}: expected an image ({', '.join(IMAGE_SUFFIXES)})")

    package, note = find_runtime(runtime_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def copy(src, rel):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(rel)

    model_files = {}
    for variant, path in models.items():
        copy(path, Path(path).name)
        model_files[variant] = Path(path).name
    if len(set(model_files.values())) != len(model_files):
        raise ExportError(f"models: the files need distinct names, got {model_files}")
    sample_files = []
    for i, p in enumerate(sample_paths):
        rel = f"samples/{p.name}"
        if rel in sample_files:  # two samples of one name from different folders
            rel = f"samples/{i}_{p.name}"
        copy(p, rel)
        sample_files.append(rel)
    atomic_write_text(out / "labels.txt", "".join(f"{x}\n" for x in labels))
    written.append("labels.txt")
    if package is not None:
        for rel in RUNTIME_FILES:
            copy(package / rel, f"{RUNTIME_DIR}/{rel}")
        runtime = {"kind": "local", "bundle": f"{RUNTIME_DIR}/vision_bundle.js",
                   "wasm": f"{RUNTIME_DIR}/wasm"}
    else:
        runtime = {"kind": "cdn", "bundle": f"{CDN_ROOT}/vision_bundle.js",
                   "wasm": f"{CDN_ROOT}/wasm"}
    runtime["version"] = MEDIAPIPE_VERSION

    # Label values as predict's pictures colour them: a detector's class k and a classifier's
    # class k are drawn as label k + 1, a segmenter's class v as v (0 = background).
    values = len(labels) + (0 if task == "segmentation" else 1)
    config = {
        "name": name, "task": task, "labels": labels,
        "colours": palette()[:values].tolist(),
        "models": model_files, "samples": sample_files, "runtime": runtime,
        "inputSize": list(model_size), "evalCrop": float(eval_crop),
        "drawThreshold": float(draw_threshold),
    }
    for asset in ASSETS:
        atomic_write_bytes(out / asset, _asset(asset).encode("utf-8"))
        written.append(asset)
    # Last: a failed export leaves no page that points at missing files. "</" is escaped so no
    # label can end the <script> element the JSON sits in.
    page = _asset("index.html").replace(_TITLE_MARK, _html_text(f"{name} ({task})")).replace(
        _CONFIG_MARK, json.dumps(config, indent=1).replace("</", "<\\/"))
    atomic_write_text(out / "index.html", page)
    written.append("index.html")
    return {"path": str(out / "index.html"), "runtime": runtime["kind"],
            "runtime_source": str(package) if package is not None else CDN_ROOT,
            "runtime_note": note, "mediapipe_version": MEDIAPIPE_VERSION, "files": written,
            "bytes": sum((out / rel).stat().st_size for rel in written)}


def find_runtime(runtime_dir=None) -> tuple[Path | None, str]:
    """(the installed `@mediapipe/tasks-vision` package folder to copy, or None, and a note on
    why a package that was found is not used).

    runtime_dir, when given, must hold the pinned version (the package folder itself or a folder
    with node_modules/@mediapipe/tasks-vision); otherwise ./node_modules and this repository's
    node_modules are tried, and one of another version is passed over (the note says so)."""
    if runtime_dir is not None:
        root = Path(runtime_dir)
        for candidate in (root, root / "node_modules" / MEDIAPIPE_PACKAGE):
            if (candidate / "package.json").is_file():
                version = _package_version(candidate)
                if version != MEDIAPIPE_VERSION:
                    raise ExportError(f"runtime_dir {candidate}: {MEDIAPIPE_PACKAGE} {version}, "
                                      f"but the page is written for {MEDIAPIPE_VERSION} (npm "
                                      f"install {MEDIAPIPE_PACKAGE}@{MEDIAPIPE_VERSION})")
                _check_runtime_files(candidate)
                return candidate, ""
        raise ExportError(f"runtime_dir {root}: no {MEDIAPIPE_PACKAGE} there (expected its "
                          f"package.json in it or in node_modules/{MEDIAPIPE_PACKAGE})")
    notes = []
    repo = Path(__file__).resolve().parents[3]
    for base in dict.fromkeys([Path.cwd(), repo]):
        candidate = base / "node_modules" / MEDIAPIPE_PACKAGE
        if not (candidate / "package.json").is_file():
            continue
        version = _package_version(candidate)
        if version != MEDIAPIPE_VERSION:
            notes.append(f"{candidate} is {version}, not the pinned {MEDIAPIPE_VERSION}")
            continue
        _check_runtime_files(candidate)
        return candidate, ""
    return None, "; ".join(notes)


def _package_version(folder: Path) -> str | None:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder / 'package.json'}: unreadable ({e})") from e


def _check_runtime_files(folder: Path) -> None:
    missing = [rel for rel in RUNTIME_FILES if not (folder / rel).is_file()]
    if missing:
        raise ExportError(f"{folder}: {MEDIAPIPE_PACKAGE} without {', '.join(missing)} (a "
                          f"partial install? reinstall it with npm)")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
