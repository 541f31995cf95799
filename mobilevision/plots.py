"""Pictures: one colour per class, the drawing that `predict` and the validation grid share, and
the run folder's figures (curves, PR curves, confusion matrix, per-class bars, the grid).

Drawing works on RGB uint8 arrays with OpenCV; figures are matplotlib (Agg) saved at 100 dpi and
written atomically (temporary file, fsync, rename), so a killed run keeps the previous picture.

Colours follow the label values every task uses: 0 is the background (never drawn), 1..K the
classes (a detector's contiguous labels, a segmenter's class indices, a classifier's class
index + 1), 255 the ignore label.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mobilevision.utils import atomic_write_bytes

MIN_SIDE = 256       # smaller images are enlarged (nearest neighbour) before drawing on them
SAMPLES = 8          # images in the validation grid
DPI = 100
_FONT = 0            # cv2.FONT_HERSHEY_SIMPLEX
_IGNORE = 255


# Colours and drawing ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """(256, 3) uint8 RGB colour of each label value (read-only): 0 black (background), 1..254
    matplotlib's tab20 colours in turn (the strong ten first), 255 (ignore) cream."""
    import matplotlib

    tab = np.asarray(matplotlib.colormaps["tab20"].colors)
    strong_first = tab[np.r_[0:20:2, 1:20:2]]  # the ten strong colours, then their light twins
    colours = np.round(strong_first * 255).astype(np.uint8)[(np.arange(256) - 1) % 20]
    colours[0] = 0
    colours[_IGNORE] = (224, 224, 192)  # VOC's colour for its void label
    colours.setflags(write=False)
    return colours


def _colour(label: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in palette()[int(label) % 256])


def _text_colour(colour) -> tuple[int, int, int]:
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def line_width(shape) -> int:
    """Box line width in pixels for a canvas of `shape` (h, w, ...): 1 up to about 380 px, 2 at
    500, 3 at 800, growing with the image so lines stay visible on large photos."""
    return max(1, round((shape[0] + shape[1]) / 2 * 0.004))


def _font(lw: int) -> tuple[float, int]:
    return 0.35 + 0.12 * lw, max(1, lw // 2)


def _canvas(image) -> tuple[np.ndarray, float]:
    """A copy of `image` to draw on, enlarged so its longer side is at least MIN_SIDE (labels
    are unreadable on a 64 px image); returns (canvas, scale factor)."""
    import cv2

    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    f = max(1.0, MIN_SIDE / max(h, w))
    if f > 1:
        return cv2.resize(image, (round(w * f), round(h * f)),
                          interpolation=cv2.INTER_NEAREST), f
    return image.copy(), 1.0


def _text_box(canvas, text: str, x: int, y: int, colour, lw: int) -> None:
    """`text` on a filled box of `colour`, inside the canvas: its bottom at y (above a box edge)
    when there is room, else its top at y (inside the box), shifted left at the right edge."""
    import cv2

    scale, thick = _font(lw)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = max(1, lw)
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    h, w = canvas.shape[:2]
    top = y - bh if y - bh >= 0 else y
    top = int(min(max(top, 0), max(0, h - bh)))
    left = int(min(max(x, 0), max(0, w - bw)))
    cv2.rectangle(canvas, (left, top), (left + bw - 1, top + bh - 1), colour, -1)
    cv2.putText(canvas, text, (left + pad, top + pad + th), _FONT, scale, _text_colour(colour),
                thick, cv2.LINE_AA)


def draw_detections(image, boxes, labels, names, scores=None) -> np.ndarray:
    """Boxes with their class (and score) on a filled label, each class in its palette colour.

    image: (h, w, 3) uint8 RGB. boxes: (N, 4) [x0, y0, x1, y1] in the image's pixels.
    labels: (N,) contiguous labels 1..K; names[label - 1] is the class name.
    scores: (N,) or None (ground truth: names only). Higher scores are drawn on top.
    Returns the (h', w', 3) uint8 RGB canvas (enlarged when the image is small)."""
    import cv2

    canvas, f = _canvas(image)
    lw = line_width(canvas.shape)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * f
    labels = np.asarray(labels).reshape(-1).astype(int)
    order = np.argsort(scores, kind="stable") if scores is not None else range(len(labels))
    drawn = []
    for i in order:
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        colour = _colour(labels[i])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, lw)
        text = names[labels[i] - 1] + ("" if scores is None else f" {float(scores[i]):.2f}")
        drawn.append((text, x0, y0, colour))
    for text, x0, y0, colour in drawn:  # labels after every box, so no box line crosses a label
        _text_box(canvas, text, x0, y0, colour, lw)
    return canvas


def draw_caption(image, text: str, label: int) -> np.ndarray:
    """`text` on a filled label of label value `label`'s colour in the top-left corner (a
    classifier's answer: pass class index + 1). Returns the RGB canvas."""
    canvas, _ = _canvas(image)
    _text_box(canvas, text, 0, 0, _colour(label), line_width(canvas.shape))
    return canvas


def overlay_mask(image, label, names, alpha: float = 0.6) -> np.ndarray:
    """The classes of a label map blended over the image, with a legend of the classes present
    to its right.

    image: (h, w, 3) uint8 RGB. label: (h, w) class indices (0 background, left as it is; 255
    ignore). names: class names by index, background first. The legend is as wide as the longest
    name needs, so overlays of one dataset line up. Returns the RGB canvas."""
    import cv2

    image = np.asarray(image, np.float32)
    label = np.asarray(label)
    coloured = (1 - alpha) * image + alpha * palette()[label]
    blend = np.where(label[..., None] > 0, coloured, image)
    canvas, _ = _canvas(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    lw = line_width(canvas.shape)
    scale, thick = _font(lw)
    present = [int(v) for v in np.unique(label) if v != 0]
    entries = [(names[v] if v < len(names) else str(v)) if v != _IGNORE else "ignore"
               for v in present]
    th = cv2.getTextSize("Ag", _FONT, scale, thick)[0][1]
    row, pad = th + 8, 4
    swatch = th + 2
    width = max(cv2.getTextSize(n, _FONT, scale, thick)[0][0] for n in [*names, "ignore"])
    h, w = canvas.shape[:2]
    out = np.full((max(h, pad + row * len(entries)), w + width + swatch + 3 * pad, 3), 255,
                  np.uint8)
    out[:h, :w] = canvas
    for i, (value, name) in enumerate(zip(present, entries)):
        y = pad + i * row
        cv2.rectangle(out, (w + pad, y), (w + pad + swatch, y + swatch), _colour(value), -1)
        cv2.putText(out, name, (w + 2 * pad + swatch, y + th), _FONT, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    return out


def sample_indices(n: int, k: int = SAMPLES) -> list[int]:
    """The fixed sample of a split of n examples for the validation grid: k indices evenly
    spread over it, the same every run."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else []


# Figures ---------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, photos: bool = False) -> bytes:
    """The figure as PNG bytes at DPI. photos: a figure of photographs, saved with 256 colours
    (median cut), about a quarter of the size of full colour."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        if photos:
            from PIL import Image

            fig.set_dpi(DPI)
            fig.canvas.draw()
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            Image.fromarray(rgb).quantize(256).save(buffer, format="png")
        else:
            fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _rgb01(label: int):
    return tuple(v / 255 for v in _colour(label))


def best_epoch(rows: list[dict], monitor: str | None, mode: str = "max") -> int | None:
    """The epoch whose val_<monitor> is best (the first of equals, as the checkpoint keeps it),
    or None when no row has it."""
    key = f"val_{monitor}"
    scored = [(float(r[key]), int(r["epoch"])) for r in rows
              if monitor and r.get(key) not in (None, "", "nan")]
    if not scored:
        return None
    best = (max if mode == "max" else min)(v for v, _ in scored)
    return next(e for v, e in scored if v == best)


def plot_curves(metrics_csv: Path, out_png: Path, monitor: str | None = None,
                mode: str = "max") -> None:
    """metrics.csv -> one PNG: a panel per quantity (every training loss and metric with its
    validation twin, every validation metric), the evaluation epochs marked by points and faint
    lines, the best epoch of val_<monitor> by a dashed line and a star. COCO's -1 (nothing to
    evaluate) is left out. Written atomically."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]

    def series(key):
        return [(e, float(r[key])) for e, r in zip(epochs, rows)
                if r.get(key) not in (None, "", "nan") and not (key.startswith("val_")
                                                                 and float(r[key]) == -1.0)]

    keys = [k for k in rows[0] if k not in ("epoch", "lr", "epoch_seconds")]  # the header
    panels = list(dict.fromkeys(k[4:] if k.startswith("val_") else k for k in keys))
    panels = [p for p in panels if series(p) or series(f"val_{p}")]
    evaluated = [e for e, r in zip(epochs, rows)
                 if any(k.startswith("val_") and r.get(k) not in (None, "") for k in r)]
    best = best_epoch(rows, monitor, mode)
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, panels):
        for e in evaluated:
            ax.axvline(e, color="0.85", lw=0.8, zorder=0)
        train, val = series(name), series(f"val_{name}")
        if train:
            ax.plot(*zip(*train), "-", color="C0")
        if val:
            ax.plot(*zip(*val), "--o", color="C1", ms=4)
            star = [v for e, v in val if e == best]
            if star:
                ax.plot([best], star, "*", color="C2", ms=14, zorder=5)
        if best is not None:
            ax.axvline(best, color="C2", ls="--", lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    key = [Line2D([], [], color="C0", label="train"),
           Line2D([], [], color="C1", ls="--", marker="o", ms=4, label="validation")]
    where = f"evaluated at epoch{'s' if len(evaluated) > 1 else ''} " \
            f"{', '.join(map(str, evaluated))}" if evaluated else "no evaluation yet"
    if best is not None:
        where += f"; best val_{monitor} at epoch {best}"
        key.append(Line2D([], [], color="C2", ls="--", marker="*", ms=10,
                          label=f"best epoch {best}"))
    fig.suptitle(where, fontsize=10, x=0.01, ha="left")
    fig.legend(handles=key, loc="upper right", ncol=len(key), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    atomic_write_bytes(out_png, _png(fig))


def pr_figure(recall, curves: dict, iou: float = 0.5):
    """Precision-recall curve of each class and their mean (COCOeval's interpolated precision at
    its recall thresholds; `curves` {class: (R,) precision, or None for a class without ground
    truth}). The legend gives each class's AP at this IoU, the area under its curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    valid = {n: np.asarray(p) for n, p in curves.items() if p is not None}
    many = len(valid) > 20
    for i, (name, p) in enumerate(curves.items()):
        if p is not None:
            ax.plot(recall, p, lw=1, color=_rgb01(i + 1), alpha=0.6 if many else 1.0,
                    label=None if many else f"{name} {np.mean(p):.3f}")
    if valid:
        mean = np.mean(list(valid.values()), axis=0)
        ax.plot(recall, mean, lw=3, color="black",
                label=f"all classes {np.mean(mean):.3f} AP@{iou:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"precision-recall at IoU {iou:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def bars_figure(metric: str, values: dict):
    """Horizontal bar per class of `values` {class: value in 0..1; None or -1 = not applicable,
    shown as n/a}, with the mean of the applicable ones as a dashed line."""
    plt = _pyplot()
    names = list(values)
    vals = [None if v is None or v < 0 else float(v) for v in values.values()]
    fig, ax = plt.subplots(figsize=(7, min(30, 1.2 + 0.28 * len(names))))
    y = np.arange(len(names))
    ax.barh(y, [v or 0 for v in vals], color=[_rgb01(i + 1) for i in range(len(names))])
    for i, v in enumerate(vals):
        ax.text(min(v or 0, 0.85) + 0.01, i, "n/a" if v is None else f"{v:.3f}", va="center",
                fontsize=8)
    applicable = [v for v in vals if v is not None]
    if applicable:
        ax.axvline(np.mean(applicable), color="black", ls="--", lw=1,
                   label=f"mean {np.mean(applicable):.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(yticks=y, xlim=(0, 1), xlabel=metric, title=f"{metric} per class")
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(cm, names):
    """The confusion matrix normalized by row (each true class sums to 1), true classes down,
    predictions across; cells annotated up to 30 classes, names on the axes up to 60."""
    plt = _pyplot()
    cm = np.asarray(cm, np.float64)
    totals = cm.sum(1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    k = len(names)
    side = min(14, max(4.5, 0.45 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 30:
        for (i, j), v in np.ndenumerate(norm):
            if v >= 0.005:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 else "black")
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (each row sums to 1)")
    fig.tight_layout()
    return fig


def samples_figure(samples: list, pairs_per_row: int = 2):
    """The validation grid: per sample its ground truth beside the prediction, `pairs_per_row`
    samples a row. samples: [(truth RGB, prediction RGB, caption, correct or None)]; a wrong
    prediction's title is red."""
    plt = _pyplot()
    rows = math.ceil(len(samples) / pairs_per_row)
    aspect = float(np.median([s[1].shape[0] / s[1].shape[1] for s in samples]))
    panel = 2.4
    fig, axes = plt.subplots(rows, 2 * pairs_per_row, squeeze=False,
                             figsize=(2 * pairs_per_row * panel, rows * (panel * aspect + 0.35)))
    for ax in axes.flat:
        ax.axis("off")
    for n, (truth, pred, caption, correct) in enumerate(samples):
        r, c = divmod(n, pairs_per_row)
        axes[r, 2 * c].imshow(truth)
        axes[r, 2 * c].set_title(f"{caption}: truth", fontsize=8)
        axes[r, 2 * c + 1].imshow(pred)
        axes[r, 2 * c + 1].set_title("prediction" + (" (wrong)" if correct is False else ""),
                                     fontsize=8, color="red" if correct is False else "black")
    fig.tight_layout(pad=0.3)
    return fig


@dataclass
class TaskPictures:
    """What a task's evaluation shows (`Task.pictures`); `write_task_pictures` draws it.

    samples: [(ground truth RGB, prediction RGB, caption, correct: bool or None)], the fixed
        sample of `sample_indices`, drawn with this module's functions.
    confusion: (K, K) counts, rows the true class, or None. names: the classes by index.
    per_class: (metric name, {class: value, None or -1 when not applicable}) or None.
    pr: (recall thresholds (R,), {class: (R,) precision or None}, IoU) or None.
    """

    samples: list = field(default_factory=list)
    names: list = field(default_factory=list)
    confusion: np.ndarray | None = None
    per_class: tuple | None = None
    pr: tuple | None = None


def write_task_pictures(pictures: TaskPictures, folder, logdir=None, step: int = 0) -> list[Path]:
    """Write the pictures of an evaluation into `folder` (atomically): `pr_curve.png`,
    `per_class_<metric>.png`, `confusion_matrix.png`, `samples.png`, each when there is
    something to show; with `logdir` the same images go to TensorBoard (tf.summary.image at
    `step`). Returns the files written."""
    figures = {}
    if pictures.pr is not None:
        figures["pr_curve"] = lambda: pr_figure(*pictures.pr)
    if pictures.per_class is not None:
        metric, values = pictures.per_class
        figures[f"per_class_{metric}"] = lambda: bars_figure(metric, values)
    if pictures.confusion is not None:
        figures["confusion_matrix"] = lambda: confusion_figure(pictures.confusion, pictures.names)
    if pictures.samples:
        figures["samples"] = lambda: samples_figure(pictures.samples)
    written, pngs = [], {}
    for name, make in figures.items():
        pngs[name] = _png(make(), photos=name == "samples")
        path = Path(folder) / f"{name}.png"
        atomic_write_bytes(path, pngs[name])
        written.append(path)
    if logdir is not None and pngs:
        log_images(logdir, pngs, step)
    return written


def log_images(logdir, pngs: dict, step: int = 0) -> None:
    """PNG files' bytes {tag: png} as TensorBoard images at `step` in `logdir`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for tag, data in pngs.items():
            tf.summary.image(tag, tf.io.decode_png(data, channels=3)[None], step=step)
    writer.close()
