"""Tests for mobilevision.data.shapes: the synthetic dataset in its real on-disk formats."""

import functools
import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mobilevision.data import shapes
from mobilevision.data.decode import read_image
from mobilevision.data.shapes import (
    SHAPE_CLASSES,
    ensure_shapes,
    generate_classification,
    generate_detection,
    generate_segmentation,
    render_scene,
    voc_colormap,
)

K = len(SHAPE_CLASSES)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- render_scene


def test_render_scene_outputs():
    for seed in range(20):
        image, objects = render_scene(np.random.default_rng(seed), size=(64, 80), num_objects=(2, 4))
        assert image.dtype == np.uint8 and image.shape == (64, 80, 3)
        union = np.zeros((64, 80), int)
        for o in objects:
            assert 0 <= o["class_id"] < K
            mask = o["mask"]
            assert mask.dtype == bool and mask.shape == (64, 80)
            assert o["area"] == mask.sum() >= 12
            union += mask
            # bbox is the tight box of the visible mask, inside the image
            x, y, w, h = o["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64
            polygon = np.asarray(o["polygon"]).reshape(-1, 2)
            assert len(polygon) >= 3
            assert (polygon >= 0).all() and (polygon[:, 0] <= 80).all() and (polygon[:, 1] <= 64).all()
        assert union.max() <= 1, "visible masks must not overlap"


def test_render_scene_mask_matches_polygon_as_pycocotools_sees_it():
    """An unoccluded object's mask is what a COCO consumer rasterises from its polygon."""
    ious = []
    for seed in range(30):
        _, objects = render_scene(np.random.default_rng(seed), size=96, num_objects=(1, 3), min_size_frac=0.3)
        for o in objects:
            if not o["occluded"]:
                rle = mask_utils.frPyObjects([o["polygon"]], 96, 96)
                coco_mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
                ious.append((coco_mask & o["mask"]).sum() / (coco_mask | o["mask"]).sum())
    assert min(ious) > 0.9 and np.mean(ious) > 0.97


def test_render_scene_forced_classes_and_determinism():
    a_img, a_obj = render_scene(np.random.default_rng(7), size=48, class_ids=[3])
    b_img, b_obj = render_scene(np.random.default_rng(7), size=48, class_ids=[3])
    c_img, _ = render_scene(np.random.default_rng(8), size=48, class_ids=[3])
    np.testing.assert_array_equal(a_img, b_img)
    assert [o["class_id"] for o in a_obj] == [3]
    np.testing.assert_array_equal(a_obj[0]["mask"], b_obj[0]["mask"])
    assert not np.array_equal(a_img, c_img)


def test_sizes_span_small_to_large():
    areas = []
    for seed in range(40):
        _, objects = render_scene(np.random.default_rng(seed), size=128, min_size_frac=0.08, max_size_frac=0.6)
        areas += [o["area"] / 128**2 for o in objects]
    assert min(areas) < 0.01 and max(areas) > 0.1


# ---------------------------------------------------------------- classification


def test_classification_layout_and_balance(tmp_path):
    summary = generate_classification(tmp_path, num_train=20, num_val=10, image_size=40, seed=1)
    for split, n in (("train", 20), ("val", 10)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == sorted(SHAPE_CLASSES)
        counts = {c: len(list((tmp_path / split / c).iterdir())) for c in SHAPE_CLASSES}
        assert set(counts.values()) == {n // K}
        assert summary["class_counts"][split] == counts
    files = sorted((tmp_path / "train").rglob("*.*"))
    assert {p.suffix for p in files} == {".jpg", ".png"}
    for p in files[:6]:
        assert read_image(p).shape == (40, 40, 3)
    manifest = json.loads((tmp_path / "shapes.json").read_text())
    assert manifest["kind"] == "classification" and manifest["params"]["seed"] == 1


def test_generation_is_deterministic_by_seed(tmp_path):
    generate_classification(tmp_path / "a", num_train=10, num_val=5, image_size=32, seed=3)
    generate_classification(tmp_path / "b", num_train=10, num_val=5, image_size=32, seed=3)
    generate_classification(tmp_path / "c", num_train=10, num_val=5, image_size=32, seed=4)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b  # byte-identical, manifest included
    assert a.keys() == c.keys()
    differing = [k for k in a if k != "shapes.json" and a[k] != c[k]]
    assert len(differing) == len(a) - 1


def test_train_and_val_images_differ(tmp_path):
    generate_classification(tmp_path, num_train=5, num_val=5, image_size=32)
    for c in SHAPE_CLASSES:
        (train,) = (tmp_path / "train" / c).iterdir()
        (val,) = (tmp_path / "val" / c).iterdir()
        assert not np.array_equal(read_image(train), read_image(val))


# ---------------------------------------------------------------- detection


def test_detection_coco_json(tmp_path):
    summary = generate_detection(tmp_path, num_train=12, num_val=4, image_size=(64, 80), seed=0)
    for split, n in (("train", 12), ("val", 4)):
        path = tmp_path / "annotations" / f"instances_{split}.json"
        assert summary["splits"][split]["annotations"] == str(path.relative_to(tmp_path))
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == n
        cat_ids = sorted(coco.getCatIds())
        assert len(cat_ids) == K
        assert cat_ids != list(range(1, K + 1)) and cat_ids != list(range(K)), "ids must be non-contiguous"
        assert [coco.loadCats(i)[0]["name"] for i in cat_ids] == list(SHAPE_CLASSES)
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= n
        assert len({a["id"] for a in anns}) == len(anns)
        for image_info in coco.loadImgs(coco.getImgIds()):
            pixels = read_image(tmp_path / split / "images" / image_info["file_name"])
            assert pixels.shape == (image_info["height"], image_info["width"], 3) == (64, 80, 3)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64
            assert a["area"] > 0 and a["iscrowd"] == 0 and a["category_id"] in cat_ids
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
            mask = coco.annToMask(a).astype(bool)
            ys, xs = np.nonzero(mask)
            assert abs(mask.sum() - a["area"]) <= 0.25 * a["area"] + 4
            assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h


def test_detection_has_occlusions_and_multiple_objects(tmp_path):
    generate_detection(tmp_path, num_train=30, num_val=1, image_size=64, objects_per_image=(3, 4))
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])
    assert per_image.max() >= 3
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 5, 7, 9}


# ---------------------------------------------------------------- segmentation


def test_segmentation_voc_layout(tmp_path):
    summary = generate_segmentation(tmp_path, num_train=8, num_val=4, image_size=64, seed=2)
    classes = (tmp_path / "classes.txt").read_text().split()
    assert classes == ["background", *SHAPE_CLASSES] == summary["classes"]
    palette = voc_colormap(256)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[255].tolist() == [224, 224, 192]
    seen = set()
    for split, n in (("train", 8), ("val", 4)):
        ids = (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == len(set(ids)) == n
        for image_id in ids:
            assert read_image(tmp_path / "JPEGImages" / f"{image_id}.jpg").shape == (64, 64, 3)
            label_image = Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png")
            assert label_image.mode == "P"
            assert np.array_equal(np.asarray(label_image.getpalette()[:30]).reshape(-1, 3), palette[:10])
            label = np.asarray(label_image)
            assert label.shape == (64, 64)
            values = set(np.unique(label).tolist())
            assert values <= set(range(len(classes))) | {255}
            assert 0 in values and 255 in values and len(values) >= 3
            seen |= values
            # the ignore band separates objects from background: no 4-neighbour touches
            fg = (label > 0) & (label < 255)
            assert not (fg[:, 1:] & (label[:, :-1] == 0)).any() and not (fg[1:, :] & (label[:-1, :] == 0)).any()
    assert len(seen - {0, 255}) >= 3


# ---------------------------------------------------------------- ensure_shapes


def test_ensure_shapes_caches_and_regenerates(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    params = dict(num_train=10, num_val=5, image_size=32, seed=0)
    assert ensure_shapes(root, "classification", **params) == root
    before = _files(root)
    manifest = json.loads((root / "shapes.json").read_text())
    assert manifest["version"] == shapes.SHAPES_VERSION
    assert manifest["params"] == {**params, "texture_contrast": 0.3}  # defaults filled in

    calls = []
    real = shapes.GENERATORS["classification"]

    @functools.wraps(real)  # keeps the signature ensure_shapes checks parameters against
    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setitem(shapes.GENERATORS, "classification", counting)
    ensure_shapes(root, "classification", **params)
    ensure_shapes(str(root), "classification", num_train=10, num_val=5, image_size=32)  # seed=0 by default
    assert calls == [] and _files(root) == before

    ensure_shapes(root, "classification", **{**params, "num_train": 5})
    assert len(calls) == 1
    assert sum(1 for _ in (root / "train").rglob("*.*")) == 5  # old images removed, not left behind
    assert json.loads((root / "shapes.json").read_text())["params"]["num_train"] == 5

    ensure_shapes(root, "detection", num_train=3, num_val=2, image_size=32)  # another kind: regenerate
    assert not (root / "train" / "circle").exists() and (root / "annotations" / "instances_val.json").exists()


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    written = []
    real_write = shapes._write_image

    def crash_after_three(path, image):
        if len(written) == 3:
            raise KeyboardInterrupt("simulated interruption")
        written.append(path)
        real_write(path, image)

    monkeypatch.setattr(shapes, "_write_image", crash_after_three)
    monkeypatch.setattr(shapes, "_MAX_WORKERS", 1)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(root, "segmentation", num_train=4, num_val=2, image_size=32)
    assert not (root / "shapes.json").exists()
    monkeypatch.setattr(shapes, "_write_image", real_write)
    ensure_shapes(root, "segmentation", num_train=4, num_val=2, image_size=32)
    assert len(list((root / "JPEGImages").iterdir())) == 6
    assert not (root / ".shapes_incomplete").exists()


def test_ensure_shapes_refuses_foreign_directory_and_bad_arguments(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "precious.jpg").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        ensure_shapes(tmp_path, "classification", num_train=5, num_val=5)
    assert (tmp_path / "train" / "precious.jpg").read_bytes() == b"user data"
    with pytest.raises(ValueError, match="unknown shapes kind"):
        ensure_shapes(tmp_path / "new", "keypoints")
    with pytest.raises(TypeError, match="num_trian"):
        ensure_shapes(tmp_path / "new", "classification", num_trian=5)


def test_concurrent_ensure_shapes_generates_once(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    calls = []
    real = shapes.GENERATORS["detection"]

    @functools.wraps(real)
    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setitem(shapes.GENERATORS, "detection", counting)
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda _: ensure_shapes(root, "detection", num_train=6, num_val=2, image_size=32), range(3)))
    assert roots == [root] * 3 and len(calls) == 1
    assert COCO(str(root / "annotations" / "instances_train.json")).getImgIds() == list(range(1, 7))


def test_generation_prints_progress_and_a_final_line(tmp_path, capsys):
    root = tmp_path / "shapes"
    ensure_shapes(root, "detection", num_train=12, num_val=4, image_size=32)
    lines = capsys.readouterr().out.splitlines()
    # Not a terminal: a first line, a line at each quarter of the 16 images, a final line.
    assert lines[0] == f"generating shapes data in {root} (detection, 12 train + 4 val images; once, then reused)"
    assert [line.split(": ")[1].split(",")[0] for line in lines[1:-1]] == ["train 4/12", "train 8/12", "train 12/12"]
    assert re.fullmatch(rf"generated 16 images \(detection\) in {re.escape(str(root))} in \d+\.\d s", lines[-1])

    ensure_shapes(root, "detection", num_train=12, num_val=4, image_size=32)  # there already: silent
    ensure_shapes(tmp_path / "quiet", "detection", num_train=3, num_val=1, image_size=32, progress=False)
    assert capsys.readouterr().out == ""


def test_progress_on_a_terminal_rewrites_one_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = iter(range(100))  # each reading 1 s later: every update is shown
    monkeypatch.setattr(shapes.time, "monotonic", lambda: float(next(clock)))
    out = Terminal()
    progress = shapes._Progress("data/x", "segmentation", {"train": 3, "val": 1}, stream=out)
    for done in (1, 2, 3):
        progress.update("train", done)
    progress.update("val", 1)
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, rewritten with \r
    shown = [part.rstrip() for part in text.rstrip("\n").split("\r")[1:]]
    assert shown == ["generating shapes data in data/x (segmentation, 3 train + 1 val images; once, "
                     "then reused)",
                     "generating shapes data in data/x: train 1/3, 1 s",
                     "generating shapes data in data/x: train 2/3, 2 s",
                     "generating shapes data in data/x: train 3/3, 3 s",
                     "generating shapes data in data/x: val 1/1, 4 s",
                     "generated 4 images (segmentation) in data/x in 5.0 s"]
    # each rewrite covers the longer line before it
    assert all(len(a) >= len(b.rstrip()) for a, b in zip(text.split("\r")[2:], text.split("\r")[1:]))


# ---------------------------------------------------------------- worker processes


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_worker_processes_write_what_one_process_writes(tmp_path, monkeypatch, capsys, kind):
    # A large split is shared with `python -c` worker processes (2 workers on a 2-core machine):
    # the files, the COCO JSON built from their results and the manifest are byte-identical.
    params = dict(num_train=40, num_val=6, image_size=48)
    monkeypatch.setattr(shapes, "_MAX_WORKERS", 1)
    ensure_shapes(tmp_path / "one", kind, progress=False, **params)
    monkeypatch.setattr(shapes, "_MAX_WORKERS", 3)
    monkeypatch.setattr(shapes.os, "cpu_count", lambda: 3)
    monkeypatch.setattr(shapes, "_PROCESS_MIN_IMAGES", 20)  # train in processes, val on threads
    started = []
    real_worker = shapes._Worker
    monkeypatch.setattr(shapes, "_Worker", lambda *a: started.append(a[:2]) or real_worker(*a))
    ensure_shapes(tmp_path / "many", kind, **params)
    assert started == [(kind, "train"), (kind, "train")]
    assert _files(tmp_path / "one") == _files(tmp_path / "many")
    lines = capsys.readouterr().out.splitlines()
    done = [int(m[1]) for m in (re.search(r": train (\d+)/40", line) for line in lines) if m]
    # A line at each quarter of the 46 images; this process renders 13, so the third quarter's
    # line (35 or more) counts the workers' images too.
    assert done == sorted(done) and done[-1] >= 35


def test_a_failing_worker_process_is_reported_with_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "_PROCESS_MIN_IMAGES", 20)
    monkeypatch.setattr(shapes.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(shapes.sys, "executable", shutil.which("false"))
    with pytest.raises(RuntimeError, match=r"worker process for classification train images 10\.\.19 "
                                           r"failed \(exit status 1\)"):
        ensure_shapes(tmp_path / "shapes", "classification", num_train=20, num_val=2, image_size=32,
                      progress=False)
    assert not (tmp_path / "shapes" / "shapes.json").exists()  # regenerated on the next call
