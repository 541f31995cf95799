"""Pictures: the palette and the drawing predict and the validation grid share (colours, labels
inside the image, line width, legend), the run folder's figures written as valid PNGs of a
sensible size (and to TensorBoard), the data report and the per-class table."""

import csv
import json

import numpy as np

from mobilevision import plots
from mobilevision.report import data_report, format_data_report, per_class_table


def _grey(h, w):
    return np.full((h, w, 3), 90, np.uint8)


def test_palette_gives_each_class_a_fixed_distinct_colour():
    p = plots.palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert p[0].tolist() == [0, 0, 0] and p[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in p[1:21]}) == 20          # 20 distinct class colours, then again
    assert p[21].tolist() == p[1].tolist()
    assert plots.palette() is p and not p.flags.writeable


def test_line_width_grows_with_the_image():
    assert plots.line_width((256, 256)) == 1
    assert plots.line_width((500, 500)) == 2 < plots.line_width((1000, 1000)) == 4


def test_boxes_in_their_class_colour_with_labels_inside_the_image():
    image = _grey(300, 400)
    boxes = [[0, 0, 100, 80], [200, 150, 300, 250]]      # the first touches the top-left corner
    out = plots.draw_detections(image, boxes, [1, 2], ["circle", "square"], [0.9, 0.5])
    assert out.shape == (300, 400, 3) and image.max() == 90   # drawn on a copy
    c1, c2 = plots.palette()[1], plots.palette()[2]
    assert (out[200, 200] == c2).all() and (out[250, 250] == c2).all()   # box edges
    def share(region, colour):
        return (region.reshape(-1, 3) == colour).all(1).mean()

    # The top box's label cannot go above it: it is inside, on a filled box of its colour,
    # with text in white or black (whichever reads on the colour).
    assert share(out[:15, :60], c1) > 0.5
    assert share(out[:15, :60], (255, 255, 255)) + share(out[:15, :60], (0, 0, 0)) > 0.02
    # The lower box's label sits on its top edge, above the box; nothing of it above y 125.
    assert share(out[135:149, 200:270], c2) > 0.4 and share(out[:125, 200:], c2) == 0


def test_small_images_are_enlarged_before_drawing():
    out = plots.draw_detections(_grey(64, 32), [[4, 4, 20, 30]], [3], ["a", "b", "c"])
    assert out.shape == (256, 128, 3)
    assert (out[16:120, 16] == plots.palette()[3]).all()     # the box scaled by 4
    caption = plots.draw_caption(_grey(64, 64), "star 0.93", 4)
    assert caption.shape == (256, 256, 3) and (caption[1, 1] == plots.palette()[4]).all()


def test_overlay_colours_classes_and_adds_a_legend_of_those_present():
    names = ["background", "circle", "square", "triangle"]
    image = _grey(256, 256)
    label = np.zeros((256, 256), np.uint8)
    label[20:60, 20:60] = 2
    label[100:110, :] = 255
    out = plots.overlay_mask(image, label, names)
    assert out.shape[0] == 256 and out.shape[1] > 256                  # legend to the right
    assert (out[200, 200] == 90).all()                                # background untouched
    expected = np.round(0.4 * 90 + 0.6 * plots.palette()[2].astype(float))
    np.testing.assert_allclose(out[40, 40], expected, atol=1)
    legend = out[:, 256:].reshape(-1, 3)
    present = {tuple(c) for c in legend}
    assert tuple(plots.palette()[2]) in present and tuple(plots.palette()[255]) in present
    assert tuple(plots.palette()[1]) not in present                   # circle is absent
    same_width = plots.overlay_mask(image, np.zeros_like(label), names)
    assert same_width.shape == out.shape                               # overlays line up


def test_fixed_sample_is_spread_over_the_split_and_the_same_every_time():
    assert plots.sample_indices(100) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert plots.sample_indices(3) == [0, 1, 2] and plots.sample_indices(0) == []


def _metrics_csv(path, rows):
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_curves_show_every_loss_and_validation_metric(tmp_path, png_size):
    # Detection-like: evaluated every 2 epochs, APl not applicable (-1).
    rows = [{"epoch": e, "lr": 0.01, "loss": 9 - e, "epoch_seconds": 3.0} for e in range(1, 7)]
    for r, ap in zip(rows[1::2], (0.2, 0.5, 0.4)):
        r.update({"val_AP": ap, "val_AP50": ap + 0.2, "val_APl": -1.0, "val_AR100": ap + 0.1})
    _metrics_csv(tmp_path / "metrics.csv", rows)
    out = tmp_path / "plots" / "curves.png"
    plots.plot_curves(tmp_path / "metrics.csv", out, "AP", "max")
    width, height = png_size(out, min_side=300)
    assert width > height                       # loss, AP, AP50, AR100 (APl is all n/a): a row
    assert not list(out.parent.glob(".*"))      # no temporary file left
    with open(tmp_path / "metrics.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert plots.best_epoch(read, "AP", "max") == 4
    assert plots.best_epoch(read, "AP", "min") == 2
    assert plots.best_epoch(read, "top1", "max") is None


def test_task_pictures_are_pngs_and_tensorboard_images(tmp_path, png_size):
    import tensorflow as tf

    names = ["circle", "square", "triangle"]
    recall = np.linspace(0, 1, 101)
    truth = plots.draw_detections(_grey(160, 160), [[10, 10, 80, 90]], [1], names)
    pred = plots.draw_detections(_grey(160, 160), [[12, 10, 80, 92]], [1], names, [0.8])
    pictures = plots.TaskPictures(
        samples=[(truth, pred, "a.jpg", None)] * 8, names=names,
        confusion=np.array([[5, 1, 0], [0, 6, 0], [2, 0, 3]]),
        per_class=("AP", {"circle": 0.5, "square": 0.75, "triangle": -1.0}),
        pr=(recall, {"circle": np.where(recall <= 0.5, 1.0, 0.0), "square": np.ones(101),
                     "triangle": None}, 0.5))
    written = plots.write_task_pictures(pictures, tmp_path / "plots", tmp_path / "logs", step=7)
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "per_class_AP.png",
                                               "pr_curve.png", "samples.png"]
    for path in written:
        png_size(path, max_bytes=400_000)
    events = list((tmp_path / "logs").glob("events.out.tfevents.*"))
    tags = {(v.tag, e.step) for f in events for e in tf.compat.v1.train.summary_iterator(str(f))
            for v in e.summary.value}
    assert tags == {(name, 7) for name in ("pr_curve", "per_class_AP", "confusion_matrix",
                                           "samples")}


def test_per_class_table_has_a_column_per_metric_and_the_mean():
    table = per_class_table({"AP": 0.5, "per_class_AP": {"circle": 0.25, "star": -1.0,
                                                         "square": 0.75},
                             "per_class_AP50": {"circle": 0.5, "star": -1.0, "square": 1.0}})
    lines = table.splitlines()
    assert lines[0].split() == ["class", "AP", "AP50"]
    assert lines[2].split() == ["star", "n/a", "n/a"]
    assert lines[-1].split() == ["mean", "0.5000", "0.7500"]
    assert per_class_table({"top1": 0.9}) is None


class _Source:
    """A stand-in data source with the data of a detector: `summary` per split."""

    def __init__(self, summaries):
        self.summaries = summaries

    def summary(self, split):
        return self.summaries[split]


def test_data_report_warns_of_a_class_without_training_examples():
    report = data_report(_Source({
        "train": {"images": 3, "objects": 4, "objects_per_class": {"cat": 4, "dog": 0},
                  "images_without_objects": 1, "dropped_boxes": {"outside the image": 2},
                  "clipped_boxes": 1, "skipped_files": {"x.jpg": "empty file (0 bytes)"}},
        "val": {"images": 1, "objects": 1, "objects_per_class": {"cat": 0, "dog": 1}}}),
        ["train", "val"])
    assert report["warnings"] == [
        "class 'dog' has no training examples (0 objects in split 'train'); the model cannot "
        "learn it",
        "class 'cat' has no examples in split 'val' (0 objects); it is not evaluated there"]
    text = format_data_report(report, "run/data.json")
    assert "train: 3 images, 4 objects, 1 images without objects" in text
    assert "objects per class: cat 4, dog 0" in text
    assert "dropped boxes: 2 (outside the image 2); clipped to the image and kept: 1" in text
    assert "x.jpg: empty file (0 bytes)" in text
    json.dumps(report)
