"""Bad input, end to end: the files users really send, through every reader they reach, and the
behaviour each gets (issue 6). This file is the one place to read "input X gets behaviour Y";
docs/data.md's bad-input table summarizes it.

Every input gets one of these, never a crash inside TensorFlow and never a silent wrong example:

- accepted as a viewer shows it (alpha, 16-bit, grayscale, CMYK, EXIF rotation), or repaired in
  a counted way (a box partly outside the image is clipped, one with no area dropped);
- an error (DatasetError, ConfigError) whose message names the file and what was expected;
  with `data.skip_invalid=true`, the dataset errors become skips recorded in the dataset's
  `skipped` (eval.json: `skipped_annotations` / `skipped_examples`);
- a skip: an unreadable file is left out of training and out of every metric, and recorded in
  `SKIPPED` with its path and reason (printed at the end of each epoch, `skipped_files` in
  eval.json).

Images go through the real pipelines (the task's `build_dataset`, training and evaluation);
annotations, masks and configs through their readers, which is where they are refused.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

import mobilevision as mv
from mobilevision.config import ConfigError, load_config
from mobilevision.data.coco import read_coco
from mobilevision.data.image_folder import DatasetError, list_image_folder
from mobilevision.data.segmentation import coco_label_map, load_example, read_segmentation
from mobilevision.data.shapes import voc_colormap
from mobilevision.data.skips import SKIPPED
from mobilevision.data.pipeline import build_dataset
from mobilevision.data.sources import source_for
from mobilevision.inference import PREPARE
from mobilevision.tasks import build_model, training_dataset
from mobilevision.tasks.detection_loss import ssd_loss_terms

# ================================================================================================
# Images: one table of kinds, each read by all three tasks' pipelines
# ================================================================================================

H, W = 32, 48  # stored size; an EXIF-rotated photo displays as W x H
RED, GREEN, BLUE, WHITE = (230, 20, 20), (20, 200, 20), (20, 20, 230), (250, 250, 250)
COLOURS = np.array([[RED, GREEN], [BLUE, WHITE]], np.uint8)  # quadrants TL TR / BL BR


def _quadrants(values) -> np.ndarray:
    """(2, 2, ...) quadrant values -> (H, W, ...) image."""
    values = np.asarray(values)
    return np.repeat(np.repeat(values, H // 2, axis=0), W // 2, axis=1)


def _png_alpha(path):
    rgba = np.concatenate([_quadrants(COLOURS),
                           _quadrants(np.array([[[255], [128]], [[0], [0]]], np.uint8))], axis=2)
    Image.fromarray(rgba, "RGBA").save(path)
    return COLOURS  # alpha dropped, the stored colour kept (also where fully transparent)


def _png_16bit(path):
    values = np.array([[5000, 23000], [41000, 65535]], np.uint16)
    image = Image.fromarray(_quadrants(values).astype(np.uint16))
    assert image.mode == "I;16"
    image.save(path)
    gray = (values >> 8).astype(np.uint8)  # 19, 89, 160, 255: scaled, not clipped to white
    return np.repeat(gray[..., None], 3, axis=2)


def _grayscale(path):
    gray = np.array([[20, 90], [160, 240]], np.uint8)
    Image.fromarray(_quadrants(gray), "L").save(path, quality=95)
    return np.repeat(gray[..., None], 3, axis=2)


def _cmyk_jpeg(path):
    cmyk = np.array([[[0, 255, 255, 0], [255, 0, 255, 0]], [[255, 255, 0, 0], [0, 0, 0, 0]]],
                    np.uint8)
    Image.fromarray(_quadrants(cmyk), "CMYK").save(path, quality=95)
    return np.array([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)]], np.uint8)


def _exif_rotated(orientation):
    def write(path):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(_quadrants(COLOURS)).save(path, quality=95, exif=exif)
        # 6: "rotate 90 degrees clockwise to display"; 8: counter-clockwise.
        return np.rot90(COLOURS, k=-1 if orientation == 6 else 1)
    return write


# kind -> (file name, writer(path) -> expected (2, 2, 3) RGB quadrant colours as displayed)
IMAGE_KINDS = {
    "png_with_alpha": ("alpha.png", _png_alpha),
    "png_16bit": ("depth16.png", _png_16bit),
    "grayscale_jpeg": ("gray.jpg", _grayscale),
    "cmyk_jpeg": ("print.jpg", _cmyk_jpeg),
    "exif_rotated_6": ("camera6.jpg", _exif_rotated(6)),
    "exif_rotated_8": ("camera8.jpg", _exif_rotated(8)),
}
ROTATED = {"exif_rotated_6", "exif_rotated_8"}


def _truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)  # noise: the pixel data outweighs the header
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact: it fails while decoding


# kind -> (file name, writer, what the recorded reason says)
BROKEN_KINDS = {
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, "truncated JPEG"),
    "zero_byte_file": ("empty.jpg", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text_named_jpg": ("notes.jpg", lambda p: p.write_text("not an image"), "not an image"),
}
# Where a broken file is caught: "read" (the reader opens each header; the record is dropped
# before any pipeline) or "decode" (the pipeline's decode gives ok=False / weight 0).
CAUGHT_AT = {
    "classification": {"truncated_jpeg": "decode", "zero_byte_file": "decode",
                       "text_named_jpg": "decode"},
    "detection": {"truncated_jpeg": "decode", "zero_byte_file": "read", "text_named_jpg": "read"},
    "segmentation": {"truncated_jpeg": "decode", "zero_byte_file": "read",
                     "text_named_jpg": "read"},
}
READERS = ("classification", "detection", "segmentation")


def _displayed_hw(kind):
    return (W, H) if kind in ROTATED else (H, W)


def _write_kinds(folder_of):
    """Write every kind; folder_of(kind) -> folder. Returns {kind: (path, expected colours)}."""
    written = {}
    for kind, (name, write) in IMAGE_KINDS.items():
        path = folder_of(kind) / name
        written[kind] = (path, write(path))
    for kind, (name, write, _) in BROKEN_KINDS.items():
        path = folder_of(kind) / name
        write(path)
        written[kind] = (path, None)
    return written


def _classification_data(root):
    """One class folder per kind (train and val alike): the label tells which file a row is."""
    kinds = sorted([*IMAGE_KINDS, *BROKEN_KINDS])
    for split in ("train", "val"):
        def folder(kind, split=split):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            return root / split / kind
        written = _write_kinds(folder)
    overrides = [f"model.num_classes={len(kinds)}"]
    return written, overrides, "shapes_classifier.yaml"


def _detection_data(root):
    """COCO JSON: one image per kind with its size as displayed; only the first has a box."""
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        written = _write_kinds(lambda kind, split=split: root / split / "images")
        images, annotations = [], []
        for i, (kind, (path, _)) in enumerate(sorted(written.items()), start=1):
            h, w = _displayed_hw(kind)
            images.append({"id": i, "file_name": path.name, "width": w, "height": h})
        annotations.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 12],
                            "area": 192, "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations,
             "categories": [{"id": 1, "name": "thing"}]}))
    return written, ["model.num_classes=1"], "shapes_ssdlite.yaml"


def _label_grid(kind) -> np.ndarray:
    """(2, 2) quadrant labels of a kind's mask, as displayed: 1 2 / 3 4 turned as its pixels."""
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    if kind in ROTATED:
        labels = np.rot90(labels, k=-1 if kind == "exif_rotated_6" else 1)
    return np.ascontiguousarray(labels)


def _segmentation_data(root):
    """VOC layout: one id per kind; each quadrant's label (1..4) is the index of its colour, so
    the label map must line up with the decoded, rotated pixels."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    written = _write_kinds(lambda kind: root / "JPEGImages")
    ids = []
    for kind, (path, _) in sorted(written.items()):
        stem = path.stem
        ids.append(stem)
        h, w = _displayed_hw(kind)
        grid = _label_grid(kind)
        mask = Image.fromarray(np.repeat(np.repeat(grid, h // 2, 0), w // 2, 1), "L")
        mask.putpalette(voc_colormap(256).reshape(-1).tolist())
        mask.save(root / "SegmentationClass" / f"{stem}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\nwhite\n")
    return written, ["model.num_classes=5", "train.class_weights=null"], "shapes_deeplabv3.yaml"


def _run_reader(reader, root):
    """Write the kinds for `reader`, run its task's evaluation and training pipelines once.

    Returns {"files": {kind: path}, "expected": {kind: colours}, "eval": {kind: (image, ok,
    label)}, "train_count": examples trained on}, plus for classification "train_labels" (the
    class of each training example) and for detection "train_positives" (positive anchors per
    training example), "train_box_targets_finite" and "background_targets" (one batch of
    targets without positives)."""
    make = {"classification": _classification_data, "detection": _detection_data,
            "segmentation": _segmentation_data}[reader]
    written, overrides, config = make(root)
    cfg = mv.load_config(config, [f"data.root={root}", "data.synthetic=null",
                                  "model.input_size=[64,64]", "train.batch_size=1",
                                  "data.eval_crop=1.0", *overrides])
    source = source_for(cfg)
    by_path = {str(path): kind for kind, (path, _) in written.items()}
    out = {"files": {k: p for k, (p, _) in written.items()},
           "expected": {k: e for k, (_, e) in written.items()}, "eval": {}}
    ds, _ = build_dataset(source, "val", training=False)
    for image, target, ok, index in ds.as_numpy_iterator():
        label = target if reader == "segmentation" else None
        if reader != "segmentation" and ok:  # as `predict` prepares it for the 64 px model
            image = PREPARE[reader](image, (64, 64), crop=1.0)
        out["eval"][by_path[source.path("val", index)]] = (image, bool(ok), label)
    train, _ = training_dataset(cfg, build_model(cfg), source)
    batches = list(train.as_numpy_iterator())
    out["train_count"] = sum(len(b[0]) for b in batches)
    if reader == "classification":
        out["train_labels"] = sorted(int(i) for b in batches for i in b[1].argmax(1))
    if reader == "detection":
        out["train_positives"] = sorted(int((b[1]["classes"][i] > 0).sum())
                                        for b in batches for i in range(len(b[0])))
        out["train_box_targets_finite"] = all(np.isfinite(b[1]["boxes"]).all() for b in batches)
        out["background_targets"] = next(b[1] for b in batches if not (b[1]["classes"] > 0).any())
    return out


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """{reader: _run_reader(...)}, each pipeline built and run once for the whole table."""
    return {reader: _run_reader(reader, tmp_path_factory.mktemp(reader)) for reader in READERS}


def _quadrant_means(image) -> np.ndarray:
    """(h, w, 3) image -> (2, 2, 3) mean colour of a small patch at each quadrant's centre."""
    h, w = image.shape[:2]
    out = np.zeros((2, 2, 3))
    for r, y in enumerate((h // 4, 3 * h // 4)):
        for c, x in enumerate((w // 4, 3 * w // 4)):
            out[r, c] = image[y - 2:y + 2, x - 2:x + 2].reshape(-1, 3).mean(0)
    return out


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_image_kind_decodes_to_rgb_as_displayed(pipelines, reader, kind):
    """Alpha dropped, 16 bit scaled to 8, gray and CMYK to RGB, EXIF rotation applied: the
    evaluation pipeline's pixels show the picture as a viewer does, and training uses it."""
    result = pipelines[reader]
    image, ok, label = result["eval"][kind]
    assert ok
    expected = result["expected"][kind].astype(float)
    np.testing.assert_allclose(_quadrant_means(image), expected, atol=12)
    if reader == "segmentation":  # own size; the label map lines up with the rotated pixels
        assert image.shape == (*_displayed_hw(kind), 3) and image.dtype == np.uint8
        h, w = label.shape
        centres = label[[h // 4, 3 * h // 4]][:, [w // 4, 3 * w // 4]]
        np.testing.assert_array_equal(centres, _label_grid(kind))
    else:  # resized to the model's 64 x 64
        assert image.shape == (64, 64, 3)


@pytest.mark.parametrize("kind", BROKEN_KINDS)
@pytest.mark.parametrize("reader", READERS)
def test_broken_image_is_skipped_counted_and_never_trained_on(pipelines, reader, kind):
    """Truncated, empty or non-image files: left out of training and of every metric (no grey
    or black stand-in), recorded with path and reason for the end-of-epoch report and eval.json."""
    result = pipelines[reader]
    path = str(result["files"][kind])
    assert BROKEN_KINDS[kind][2] in SKIPPED.items()[path]
    if CAUGHT_AT[reader][kind] == "read":
        assert kind not in result["eval"]          # dropped with its record
    else:
        assert result["eval"][kind][1] is False    # in place, weight 0 / ok False
    assert result["train_count"] == len(IMAGE_KINDS)  # only the good files are trained on
    if reader == "classification":
        good = sorted(sorted([*IMAGE_KINDS, *BROKEN_KINDS]).index(k) for k in IMAGE_KINDS)
        assert result["train_labels"] == good


def test_images_without_boxes_are_trained_as_background(pipelines):
    """COCO: an image with an empty annotation list is kept as a negative (as the TF Object
    Detection API keeps it; torchvision's reference scripts and Detectron2 drop them by
    default): every anchor's target is background, and the loss on it is finite."""
    result = pipelines["detection"]
    assert result["train_positives"][:-1] == [0] * (len(IMAGE_KINDS) - 1)
    assert result["train_positives"][-1] > 0  # the one image with a box
    assert result["train_box_targets_finite"]
    targets = result["background_targets"]
    rng = np.random.default_rng(0)
    outputs = {"boxes": rng.normal(size=targets["boxes"].shape).astype(np.float32),
               "classes": rng.normal(size=(*targets["classes"].shape, 2)).astype(np.float32)}
    for loss in ("softmax", "focal"):
        terms = ssd_loss_terms(targets, outputs, classification=loss)
        assert np.isfinite(float(terms["loc"])) and np.isfinite(float(terms["cls"]))
        assert float(terms["num_pos"]) == 0 and float(terms["loc"]) == 0


# ================================================================================================
# Boxes: the COCO JSON reader (detection)
# ================================================================================================


def _coco(tmp_path, annotations, images=None):
    """instances.json over a real 100 x 50 image a.jpg (the reader opens each file's header)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (100, 50), (90, 90, 90)).save(tmp_path / "img" / "a.jpg")
    data = {"images": images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _ann(bbox, **kw):
    return {"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox, **kw}


# (id, annotation, dropped reason or None, expected [ymin, xmin, ymax, xmax] of the kept box)
BOX_CASES = [
    ("zero_width", _ann([10, 10, 0, 5]), "zero or negative size", None),
    ("zero_height", _ann([10, 10, 5, 0]), "zero or negative size", None),
    ("negative_height", _ann([10, 10, 5, -3]), "zero or negative size", None),
    ("outside_the_image", _ann([200, 10, 5, 5]), "outside the image", None),
    ("above_the_image", _ann([10, -30, 5, 20]), "outside the image", None),
    ("partly_outside_is_clipped", _ann([90, 40, 20, 20]), None, [0.8, 0.9, 1.0, 1.0]),
    ("negative_origin_is_clipped", _ann([-10, -5, 30, 15]), None, [0.0, 0.0, 0.2, 0.2]),
]


@pytest.mark.parametrize("skip_invalid", [False, True], ids=["default", "skip_invalid"])
@pytest.mark.parametrize("case", BOX_CASES, ids=[c[0] for c in BOX_CASES])
def test_degenerate_boxes_are_dropped_and_partly_outside_clipped(tmp_path, case, skip_invalid):
    """Not errors in either mode: a box with no area in the image is dropped and counted
    (eval.json `dropped_boxes`); one partly outside is clipped to the image and counted
    (`clipped_boxes`), as torchvision's COCO reader does. The image itself stays."""
    _, ann, dropped, kept = case
    ds = read_coco(_coco(tmp_path, [ann]), tmp_path / "img", skip_invalid=skip_invalid)
    record = ds.records[0]
    if dropped:
        assert ds.dropped == {dropped: 1} and len(record.boxes) == 0 and ds.clipped == 0
    else:
        np.testing.assert_allclose(record.boxes, [kept], atol=1e-6)
        assert ds.clipped == 1 and not ds.dropped
    assert not ds.skipped


def _images(*entries):
    return [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}, *entries]


# (id, annotations, images, error regex (default), key in `skipped` (skip_invalid), images kept)
INVALID_COCO_CASES = [
    ("unknown_category_id", [_ann([1, 1, 5, 5], category_id=3)], None,
     r"instances\.json: annotation 7: category_id 3 is not among the categories \[1, 90\]",
     "annotation 7", [1]),
    ("unknown_image_id", [_ann([1, 1, 5, 5], image_id=4)], None,
     r"instances\.json: annotation 7: image_id 4 is not in 'images'", "annotation 7", [1]),
    ("bbox_not_four_numbers", [_ann([1, 1, 5])], None,
     r"annotation 7: bbox must be 4 finite numbers \[x, y, w, h\], got \[1, 1, 5\]",
     "annotation 7", [1]),
    ("bbox_nan", [_ann([1, 1, 5, float("nan")])], None, r"annotation 7: bbox must be 4 finite",
     "annotation 7", [1]),
    ("missing_image_file", [], _images({"id": 2, "file_name": "gone.jpg", "width": 100,
                                        "height": 50}),
     r"instances\.json: image 2: file .*img/gone\.jpg not found", "image 2", [1]),
    ("image_entry_without_size", [], _images({"id": 2, "file_name": "a.jpg"}),
     r"image entry .*'id': 2.*needs id, file_name, and a positive width and height", None, [1]),
    ("image_entry_zero_width", [], _images({"id": 2, "file_name": "a.jpg", "width": 0,
                                            "height": 50}),
     r"image entry .*needs id, file_name, and a positive width and height", None, [1]),
    ("size_differs_from_the_file", [], _images({"id": 2, "file_name": "a.jpg", "width": 120,
                                                "height": 50}),
     r"instances\.json: image 2: file .*a\.jpg is 100x50 \(w x h\) but the JSON gives 120x50, "
     r"the size its annotations are relative to$", "image 2", [1]),
]


@pytest.mark.parametrize("case", INVALID_COCO_CASES, ids=[c[0] for c in INVALID_COCO_CASES])
def test_invalid_coco_entries_are_errors_or_skipped(tmp_path, case):
    """An error naming the annotation file and the entry; with skip_invalid, the entry is
    skipped and listed (eval.json `skipped_annotations`) and the rest is read."""
    _, annotations, images, message, key, kept = case
    path = _coco(tmp_path, annotations, images)
    with pytest.raises(DatasetError, match=message):
        read_coco(path, tmp_path / "img")
    ds = read_coco(path, tmp_path / "img", skip_invalid=True)
    assert [r.image_id for r in ds.records] == kept
    assert len(ds.skipped) == 1 and (key is None or key in ds.skipped)
    assert all(len(r.boxes) == 0 for r in ds.records)


def test_exif_rotated_photo_annotated_as_stored_is_caught(tmp_path):
    """Pixels come out rotated as displayed; a JSON that gives the stored (unrotated) size would
    put every box in the wrong place, so the mismatch is an error that says why."""
    (tmp_path / "img").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50)).save(tmp_path / "img" / "phone.jpg", exif=exif)
    images = [{"id": 1, "file_name": "phone.jpg", "width": 100, "height": 50}]
    path = _coco(tmp_path, [_ann([10, 10, 20, 20])], images)
    with pytest.raises(DatasetError, match=r"image 1: file .*phone\.jpg is 50x100 \(w x h\) but "
                                           r"the JSON gives 100x50.*EXIF rotation, give its size "
                                           r"and annotations as displayed"):
        read_coco(path, tmp_path / "img")
    assert read_coco(path, tmp_path / "img", skip_invalid=True).records == []
    images[0].update(width=50, height=100)  # annotated as displayed: fine
    assert len(read_coco(_coco(tmp_path, [_ann([10, 10, 20, 20])], images),
                         tmp_path / "img").records[0].boxes) == 1


@pytest.mark.parametrize("skip_invalid", [False, True], ids=["default", "skip_invalid"])
def test_unreadable_image_is_dropped_at_read_and_reported(tmp_path, skip_invalid):
    """The reader opens each image's header: a file that cannot be identified is skipped in both
    modes (recorded in SKIPPED) and kept out of COCOeval's image ids. A file cut after its header
    is skipped by the pipeline's decode instead (the image table above)."""
    path = _coco(tmp_path, [_ann([10, 10, 20, 20])],
                 _images({"id": 2, "file_name": "b.jpg", "width": 100, "height": 50}))
    (tmp_path / "img" / "b.jpg").write_bytes(b"")
    ds = read_coco(path, tmp_path / "img", skip_invalid=skip_invalid)
    assert [r.image_id for r in ds.records] == [1] and not ds.skipped
    assert SKIPPED.items()[str(tmp_path / "img" / "b.jpg")] == "empty file (0 bytes)"


def test_empty_annotation_list_keeps_every_image(tmp_path):
    ds = read_coco(_coco(tmp_path, []), tmp_path / "img")
    assert len(ds.records) == 1 and ds.records[0].boxes.shape == (0, 4)
    assert not ds.dropped and not ds.skipped


@pytest.mark.parametrize("text, message", [
    (None, r"nope\.json: annotation file not found"),
    ('{"images": [}', r"bad\.json: not valid JSON \(line 1"),
    ('{"images": []}', r"bad\.json: expected a COCO instances file with a list under 'annotations'"),
    ('[1, 2]', r"bad\.json: expected a COCO instances file with a list under 'images'"),
    ('{"images": [], "annotations": [], "categories": [{"name": "x"}]}',
     r"bad\.json: category \{'name': 'x'\} needs an integer 'id'"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}',
     r"bad\.json: category id 1 appears more than once"),
], ids=["missing", "not_json", "no_annotations_list", "not_an_object", "category_without_id",
        "duplicate_category_id"])
def test_unusable_annotation_file_is_an_error_naming_it(tmp_path, text, message):
    path = tmp_path / ("nope.json" if text is None else "bad.json")
    if text is not None:
        path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_coco(path, tmp_path)


# ================================================================================================
# Masks: the VOC and image + mask folder readers, and COCO JSON painted into label maps
# ================================================================================================

CLASSES = ["background", "a", "b", "c", "d"]  # 5 classes: labels 0..4, 255 = ignore
PALETTE = voc_colormap(256).reshape(-1).tolist()


def _mask(path, values, mode="P"):
    image = Image.fromarray(np.asarray(values, np.uint8), "L")
    if mode == "P":
        image.putpalette(PALETTE)
    image.save(path)


def _good_label(h=8, w=12):
    values = np.zeros((h, w), np.uint8)
    values[2:5, 3:7] = 2
    return values


@pytest.fixture(params=["voc", "folder"])
def seg_layout(request, tmp_path):
    """(format, root, images dir, masks dir) with two good examples "p" and "q" (8 x 12)."""
    root = tmp_path / request.param
    if request.param == "voc":
        images, masks = root / "JPEGImages", root / "SegmentationClass"
        (root / "ImageSets/Segmentation").mkdir(parents=True)
        (root / "ImageSets/Segmentation/train.txt").write_text("p\nq\n")
    else:
        images, masks = root / "train" / "images", root / "train" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for stem in ("p", "q"):
        Image.new("RGB", (12, 8), (100, 100, 100)).save(images / f"{stem}.jpg")
        _mask(masks / f"{stem}.png", _good_label())
    return request.param, root, images, masks


def _read(layout, **kw):
    fmt, root, _, _ = layout
    return read_segmentation(fmt, root, "train", class_names=CLASSES, **kw)


def _wrong_size(masks):
    _mask(masks / "q.png", np.zeros((8, 10), np.uint8))


def _out_of_range(masks):
    values = _good_label()
    values[1, 1], values[2, 2] = 7, 5
    _mask(masks / "q.png", values)


def _rgb(masks):
    Image.new("RGB", (12, 8), (128, 0, 0)).save(masks / "q.png")  # VOC colours, not indices


def _rgba_palette_colours(masks):
    Image.new("RGBA", (12, 8), (128, 0, 0, 255)).save(masks / "q.png")


def _missing(masks):
    (masks / "q.png").unlink()


# (id, corrupt(masks dir), error regex naming the file and what was expected)
MASK_ERRORS = [
    ("wrong_size", _wrong_size, r"q\.png: label map is 10x8 \(w x h\) but its image .*q\.jpg is 12x8"),
    ("labels_out_of_range", _out_of_range,
     r"q\.png: label values 5, 7 are outside the 5 classes 0\.\.4 \(255 = ignore\)"),
    ("rgb_colour_mask", _rgb, r"q\.png: label map is a RGB image; expected class indices in a "
                              r"palette \(P\) or grayscale \(L\) PNG"),
    ("rgba_mask", _rgba_palette_colours, r"q\.png: label map is a RGBA image; expected class"),
    ("missing_mask", _missing, r"q\.png: label map not found \(the pair of .*q\.jpg"),
]


@pytest.mark.parametrize("case", MASK_ERRORS, ids=[c[0] for c in MASK_ERRORS])
def test_bad_mask_is_an_error_naming_it_or_skipped(seg_layout, case):
    """Found when the split is read, before training: an error naming the mask and what was
    expected; with skip_invalid the example is left out and listed (eval.json
    `skipped_examples`)."""
    _, corrupt, message = case
    corrupt(seg_layout[3])
    with pytest.raises(DatasetError, match=message):
        _read(seg_layout)
    ds = _read(seg_layout, skip_invalid=True)
    assert [r.image_id for r in ds.records] == ["p"]
    assert list(ds.skipped) == [str(seg_layout[3] / "q.png")]


@pytest.mark.parametrize("values, mode", [
    (np.where(_good_label() == 2, 255, 4), "P"),   # 255 is VOC's "void": ignored, not a class
    (_good_label(), "L"),                          # grayscale: values are the classes
    (_good_label().astype(np.uint16) * 1, "I;16"),  # 16-bit gray with values 0..4
], ids=["ignore_label_255", "grayscale_mask", "mask_16bit"])
def test_valid_masks_are_read_as_class_indices(seg_layout, values, mode):
    masks = seg_layout[3]
    if mode == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(masks / "q.png")
    else:
        _mask(masks / "q.png", values, mode)
    ds = _read(seg_layout)
    assert len(ds.records) == 2 and not ds.skipped
    _, label = load_example(ds.records[1], len(CLASSES))
    np.testing.assert_array_equal(label, values)


@pytest.mark.parametrize("which, keep, reason", [
    ("masks/q.png", 0.5, "corrupt label map"),
    ("masks/q.png", 0, "corrupt label map"),
    ("images/q.jpg", 0, "empty file (0 bytes)"),
    ("images/q.jpg", 20, "truncated or corrupt JPEG"),
], ids=["truncated_mask", "zero_byte_mask", "zero_byte_image", "image_cut_in_its_header"])
@pytest.mark.parametrize("skip_invalid", [False, True], ids=["default", "skip_invalid"])
def test_unreadable_mask_or_image_is_skipped_and_reported(seg_layout, which, keep, reason,
                                                          skip_invalid):
    """Found when the split is read; skipped in both modes and recorded in SKIPPED with its path
    and reason. (An image cut after its header reads here and is skipped by the pipeline's
    decode: the image table above.)"""
    _, _, images, masks = seg_layout
    path = (masks if which.startswith("masks") else images) / which.split("/")[1]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    ds = _read(seg_layout, skip_invalid=skip_invalid)
    assert [r.image_id for r in ds.records] == ["p"] and not ds.skipped
    assert SKIPPED.items()[str(path)].startswith(reason)


def test_listed_image_missing_is_an_error_naming_it_and_the_list(seg_layout):
    fmt, root, images, _ = seg_layout
    (images / "q.jpg").unlink()
    message = (r"JPEGImages/q\.jpg: image file not found \(listed as 'q' in .*train\.txt\)"
               if fmt == "voc" else r"masks/q\.png: label map without an image")
    with pytest.raises(DatasetError, match=message):
        _read(seg_layout)
    assert [r.image_id for r in _read(seg_layout, skip_invalid=True).records] == ["p"]


def _coco_seg(tmp_path, annotations, size=(20, 30), file_size=None, images=None):
    h, w = size
    (tmp_path / "images").mkdir(exist_ok=True)
    fh, fw = file_size or size
    Image.new("RGB", (fw, fh), (100, 100, 100)).save(tmp_path / "images" / "one.jpg")
    data = {"images": images or [{"id": 5, "file_name": "one.jpg", "height": h, "width": w}],
            "annotations": annotations,
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))


def _seg_ann(segmentation, **kw):
    return {"id": 9, "image_id": 5, "category_id": 7, "iscrowd": 0, "area": 10.0,
            "segmentation": segmentation, **kw}


def _read_coco_seg(tmp_path, **kw):
    return read_segmentation("coco", tmp_path, "x", coco={"images": "images",
                                                          "annotations": "instances.json"}, **kw)


# (id, annotations, image size in the JSON, size of the file, error regex)
COCO_SEG_ERRORS = [
    ("unknown_category_id", [_seg_ann([[0, 0, 4, 0, 4, 4]], category_id=4)], None,
     r"instances\.json: annotation 9: category_id 4 is not among the categories \[3, 7\]$"),
    ("unknown_image_id", [_seg_ann([[0, 0, 4, 0, 4, 4]], image_id=6)], None,
     r"instances\.json: annotation 9: image_id 6 is not in 'images'"),
    ("rle_of_another_size", [_seg_ann({"size": [10, 10], "counts": [100]})], None,
     r"annotation 9: segmentation: RLE of size \[10, 10\] \(h, w\) on an image of \[20, 30\]"),
    ("rle_counts_too_short", [_seg_ann({"size": [20, 30], "counts": [5, 5]})], None,
     r"annotation 9: segmentation: RLE counts must be run lengths adding up to 20 x 30 = 600"),
    ("rle_string_garbage", [_seg_ann({"size": [20, 30], "counts": "@@@"})], None,
     r"annotation 9: segmentation: RLE counts must be run lengths adding up to 20 x 30"),
    ("polygon_of_strings", [_seg_ann([["a", "b", "c", "d", "e", "f"]])], None,
     r"annotation 9: segmentation: expected polygons, lists of numbers"),
    ("image_size_differs_from_the_json", [], (21, 30),
     r"instances\.json: image 5: file .*one\.jpg is 30x21 \(w x h\) but the JSON gives 30x20, "
     r"the size its annotations are relative to$"),
]


@pytest.mark.parametrize("case", COCO_SEG_ERRORS, ids=[c[0] for c in COCO_SEG_ERRORS])
def test_bad_coco_segmentation_is_an_error_naming_it_or_skipped(tmp_path, case):
    """Checked when the split is read, so none fails later inside the tf.data pipeline or paints
    garbage; with skip_invalid the annotation (or image) is left out and listed."""
    _, annotations, file_size, message = case
    _coco_seg(tmp_path, annotations, file_size=file_size)
    with pytest.raises(DatasetError, match=message):
        _read_coco_seg(tmp_path)
    if file_size is None:
        ds = _read_coco_seg(tmp_path, skip_invalid=True)
        assert len(ds.skipped) == 1 and len(ds.records) == 1
        assert (coco_label_map(ds.records[0]) == 0).all()  # the bad annotation painted nothing
    else:
        with pytest.raises(DatasetError, match="no usable examples"):
            _read_coco_seg(tmp_path, skip_invalid=True)


SHARED_COCO_ERRORS = [  # (id, annotation changes, size of the file, entry named)
    ("unknown_category_id", {"category_id": 4}, None, "annotation 9"),
    ("unknown_image_id", {"image_id": 6}, None, "annotation 9"),
    ("image_size_differs_from_the_json", {}, (21, 30), "image 5"),
]


@pytest.mark.parametrize("case", SHARED_COCO_ERRORS, ids=[c[0] for c in SHARED_COCO_ERRORS])
def test_coco_errors_read_the_same_for_detection_and_segmentation(tmp_path, case):
    """One parser (CocoInstances) checks the file for both readers (and COCOeval): one bad entry
    gets one message, and with skip_invalid the same skip."""
    _, changes, file_size, entry = case
    _coco_seg(tmp_path, [_seg_ann([[0, 0, 4, 0, 4, 4]], bbox=[0, 0, 4, 4], **changes)],
              file_size=file_size)
    messages, skips = [], []
    for read in (lambda **kw: read_coco(tmp_path / "instances.json", tmp_path / "images", **kw),
                 lambda **kw: _read_coco_seg(tmp_path, **kw)):
        with pytest.raises(DatasetError) as error:
            read()
        messages.append(str(error.value))
        if file_size is None:
            skips.append(read(skip_invalid=True).skipped)
    assert messages[0] == messages[1] and f"instances.json: {entry}: " in messages[0]
    assert all(s == {entry: messages[0].split(f"{entry}: ", 1)[1]} for s in skips)


def test_coco_image_without_annotations_is_all_background(tmp_path):
    _coco_seg(tmp_path, [])
    ds = _read_coco_seg(tmp_path)
    assert len(ds.records) == 1 and (coco_label_map(ds.records[0]) == 0).all()


# ================================================================================================
# Class folders (classification)
# ================================================================================================


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    """A class folder without images would still get an output that is never learned."""
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "1.jpg")
    (tmp_path / "train" / "dog" / "readme.txt").write_text("no pictures yet")
    with pytest.raises(DatasetError, match=r"train/dog: class folder has no images "
                                           r"\(\.jpg, \.jpeg, \.png, \.bmp\); add some or remove it"):
        list_image_folder(tmp_path / "train")
    (tmp_path / "val" / "dog").mkdir(parents=True)  # an empty class in val is just not evaluated
    Image.new("RGB", (8, 8)).save((tmp_path / "val" / "dog" / "2.png"))
    (tmp_path / "val" / "cat").mkdir()
    assert list_image_folder(tmp_path / "val", ["cat", "dog"])[1] == [1]


def test_other_files_in_class_folders_are_not_listed(tmp_path):
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "1.JPG")
    for name in (".DS_Store", "notes.txt", "clip.gif", "scan.tiff"):
        (folder / name).write_bytes(b"x")
    paths, labels, names = list_image_folder(tmp_path / "train")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["1.JPG"] and names == ["cat"]


# ================================================================================================
# Configs: the YAML loader and key=value overrides
# ================================================================================================

# (id, file contents (str or bytes), error regex after the file's path)
CONFIG_FILE_ERRORS = [
    ("unknown_key", "train:\n  epoch: 5\n",
     r": unknown key 'train\.epoch'; did you mean 'train\.epochs'\?"),
    ("unknown_key_in_wrong_section", "epochs: 5\n",
     r": unknown key 'epochs'; did you mean 'train\.epochs'\?"),
    ("misspelled_section", "trian:\n  epochs: 5\n",
     r": unknown key 'trian\.epochs'; did you mean 'train\.epochs'\?"),
    ("nested_unknown_key", "model:\n  backbone:\n    alfa: 0.5\n",
     r": unknown key 'model\.backbone\.alfa'; did you mean 'model\.backbone\.alpha'\?"),
    ("word_for_integer", "train:\n  epochs: five\n", r": key 'train\.epochs' expects an integer, got 'five'"),
    ("float_for_integer", "train:\n  epochs: 2.5\n", r": key 'train\.epochs' expects an integer"),
    ("quoted_number", "train:\n  batch_size: '32'\n", r": key 'train\.batch_size' expects an integer, got '32'"),
    ("size_as_text", "model:\n  input_size: 224x224\n",
     r": key 'model\.input_size' expects \[height, width\], two positive integers"),
    ("size_one_number_list", "model:\n  input_size: [64]\n", r": key 'model\.input_size' expects \[height"),
    ("value_not_allowed", "model:\n  backbone:\n    alpha: 0.6\n",
     r": key 'model\.backbone\.alpha' must be one of 0\.35, 0\.5, 0\.75, 1\.0, 1\.3, 1\.4, got 0\.6"),
    ("output_stride_not_allowed", "model:\n  backbone:\n    output_stride: 4\n",
     r": key 'model\.backbone\.output_stride' must be one of 8, 16, 32"),
    ("word_for_bool", "data:\n  augment:\n    flip: maybe\n", r": key 'data\.augment\.flip' expects true or false"),
    ("value_for_a_section", "train: 5\n",
     r": key 'train' is a section; expected a mapping of its keys \(train\.epochs, .*\), got 5"),
    ("empty_section", "train:\nmodel:\n  num_classes: 3\n",
     r": key 'train' is a section; expected a mapping of its keys .*got nothing"),
    ("missing_colon", "train:\n  epochs 5\n", r": key 'train' is a section.*got 'epochs 5'"),
    ("tab_indentation", "train:\n\tepochs: 5\n",
     r" line 2: invalid YAML: .*YAML does not allow tabs for indentation; use spaces"),
    ("tab_deeper_in_the_file", "task: detection\nmodel:\n    num_classes: 3\n\tinput_size: [64, 64]\n",
     r" line 4: invalid YAML: .*tabs"),
    ("unclosed_bracket", "train: [1, 2\n", r" line 2: invalid YAML: expected ',' or ']'"),
    ("duplicate_key", "train:\n  epochs: 5\nmodel:\n  num_classes: 3\ntrain:\n  batch_size: 8\n",
     r" line 5: invalid YAML: key 'train' appears twice \(first on line 1\)"),
    ("list_not_mapping", "- task: detection\n", r": expected a mapping of keys at the top level, got list"),
    ("scalar_not_mapping", "shapes_classifier.yaml\n", r": expected a mapping of keys at the top level, got str"),
    ("empty_file", "", r": config file is empty \(or only comments\); expected a mapping of keys"),
    ("only_comments", "# todo\n", r": config file is empty \(or only comments\)"),
    ("not_utf8", b"name: caf\xe9\n", r" line 1: not UTF-8 text \(byte 0xe9\); save the config as UTF-8"),
]


@pytest.mark.parametrize("case", CONFIG_FILE_ERRORS, ids=[c[0] for c in CONFIG_FILE_ERRORS])
def test_bad_config_file_is_an_error_naming_file_key_and_fix(tmp_path, case):
    _, text, message = case
    path = tmp_path / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match="^" + re.escape(str(path)) + message):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("alpha=0.5", r"override 'alpha=0\.5': unknown key 'alpha'; did you mean 'model\.backbone\.alpha'\?"),
    ("train.epochs=abc", r"override 'train\.epochs=abc': key 'train\.epochs' expects an integer"),
    ("train.epochs", r"override 'train\.epochs': expected key=value \(e\.g\. train\.epochs=5\)"),
    ("data.skip_invalid=1", r"key 'data\.skip_invalid' expects true or false, got 1"),
    ("model.weights=/no/such/file.weights.h5",
     r"key 'model\.weights' names '/no/such/file\.weights\.h5', which is not a file"),
    ("model.backbone.weights=/no/such/file.h5", r"key 'model\.backbone\.weights' names .*not a file"),
], ids=["unknown_key", "wrong_type", "no_equals", "number_for_bool", "missing_weights_file",
        "missing_backbone_weights_file"])
def test_bad_override_is_an_error_naming_it(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_weights_file_in_yaml_names_file_key_and_path(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"model:\n  weights: {tmp_path / 'nope.weights.h5'}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'model\.weights' names '.*nope\.weights"
                                          r"\.h5', which is not a file"):
        load_config(path)


def test_missing_or_directory_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config 'shapes_clasifier\.yaml' not found as a path nor "
                                          r"among the bundled configs .*did you mean "
                                          r"'shapes_classifier\.yaml'\?"):
        load_config("shapes_clasifier.yaml")
    with pytest.raises(ConfigError, match=r"not found as a path"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a directory; expected a YAML file"):
        load_config(tmp_path)
