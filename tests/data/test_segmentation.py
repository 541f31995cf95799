"""Segmentation readers: VOC palette PNGs read as indices, COCO polygons / RLE painted into label
maps with crowd regions ignored, image + mask folders, and augmentation that keeps labels on
their pixels. Bad masks, images and annotations: tests/test_bad_input.py."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobilevision.data.image_folder import DatasetError
from mobilevision.data.segmentation import (VOC_CLASSES, coco_label_map, read_coco_segmentation,
                                            read_label_png, read_segmentation)
from mobilevision.data.segmentation_augment import train_transform
from mobilevision.data.shapes import SHAPE_CLASSES, ensure_shapes, voc_colormap

PALETTE = voc_colormap(256).reshape(-1).tolist()


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_seg")
    ensure_shapes(root, "segmentation", num_train=6, num_val=3, image_size=48, seed=0)
    return root


def _write_mask(path, values, mode="P"):
    image = Image.fromarray(np.asarray(values, np.uint8), mode="L")
    if mode == "P":
        image.putpalette(PALETTE)
    image.save(path)


def _write_image(path, h, w):
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


@pytest.fixture()
def tiny_voc(tmp_path):
    """A hand-made VOC layout: ids a, b (train), 3 classes."""
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for image_id in ("a", "b"):
        _write_image(root / "JPEGImages" / f"{image_id}.jpg", 8, 12)
        values = np.zeros((8, 12), np.uint8)
        values[2:5, 3:7] = 2
        values[0, :] = 255
        _write_mask(root / "SegmentationClass" / f"{image_id}.png", values)
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    return root


def test_shapes_voc_layout_reads_palette_indices(shapes_voc):
    ds = read_segmentation("voc", shapes_voc, "train",
                           class_names=(shapes_voc / "classes.txt").read_text().split())
    assert ds.class_names == ["background", *SHAPE_CLASSES] and len(ds.records) == 6
    record = ds.records[0]
    assert (record.height, record.width) == (48, 48)
    with Image.open(record.mask_path) as im:
        assert im.mode == "P"
        rgb = np.array(im.convert("RGB"))
    labels = read_label_png(record.mask_path, 6)
    assert labels.dtype == np.uint8 and labels.shape == (48, 48)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5, 255} and 255 in labels and labels.max() == 255
    # Indices, not colours: each index's pixels carry that index's palette colour.
    np.testing.assert_array_equal(rgb, voc_colormap(256)[labels])


def test_palette_png_index_differs_from_its_colour(tmp_path):
    values = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    _write_mask(tmp_path / "m.png", values)
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png", 21), values)
    _write_mask(tmp_path / "l.png", values, mode="L")  # grayscale masks read as their values
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png", 21), values)


def test_default_voc_classes(tiny_voc):
    ds = read_segmentation("voc", tiny_voc, "train")
    assert ds.class_names == list(VOC_CLASSES) and len(ds.class_names) == 21


def test_missing_split_list_names_it(tiny_voc):
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt: split list not found"):
        read_segmentation("voc", tiny_voc, "val", class_names=["bg", "x", "y"])


def test_folder_layout_pairs_by_stem_and_names_unpaired_files(tmp_path):
    images, masks = tmp_path / "train" / "images", tmp_path / "train" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for stem in ("p", "q"):
        _write_image(images / f"{stem}.png", 6, 6)
        _write_mask(masks / f"{stem}.png", np.ones((6, 6), np.uint8), mode="L")
    ds = read_segmentation("folder", tmp_path, "train", class_names=["bg", "thing"])
    assert [r.image_id for r in ds.records] == ["p", "q"]
    _write_image(images / "r.jpg", 6, 6)
    with pytest.raises(DatasetError, match=r"masks/r\.png: label map not found \(the pair of .*r\.jpg\)"):
        read_segmentation("folder", tmp_path, "train", class_names=["bg", "thing"])
    (images / "r.jpg").unlink()
    _write_mask(masks / "s.png", np.ones((6, 6), np.uint8))
    with pytest.raises(DatasetError, match=r"masks/s\.png: label map without an image"):
        read_segmentation("folder", tmp_path, "train", class_names=["bg", "thing"])


def _coco_file(tmp_path, annotations, size=(20, 30)):
    h, w = size
    (tmp_path / "images").mkdir(exist_ok=True)
    _write_image(tmp_path / "images" / "one.jpg", h, w)
    data = {"images": [{"id": 5, "file_name": "one.jpg", "height": h, "width": w}],
            "annotations": annotations,
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_polygons_and_rle_become_labels_with_crowd_ignored(tmp_path):
    from pycocotools import mask as mask_utils

    h, w = 20, 30
    crowd = np.zeros((h, w), np.uint8, order="F")
    crowd[10:20, 0:30] = 1  # bottom half: a crowd of "seven"
    counts = mask_utils.encode(crowd)  # compressed RLE
    uncompressed = {"size": [h, w], "counts": []}
    small = np.zeros((h, w), np.uint8)
    small[12:16, 20:26] = 1  # a single "three" inside the crowd region, as uncompressed RLE
    flat, value, run = small.flatten(order="F"), 0, 0
    for v in flat:
        if v != value:
            uncompressed["counts"].append(run)
            value, run = v, 0
        run += 1
    uncompressed["counts"].append(run)
    anns = [
        {"id": 1, "image_id": 5, "category_id": 7, "iscrowd": 0, "area": 50.0,
         "segmentation": [[2, 2, 12, 2, 12, 7, 2, 7]]},  # polygon: x 2..12, y 2..7
        {"id": 2, "image_id": 5, "category_id": 7, "iscrowd": 1, "area": 300.0,
         "segmentation": {"size": [h, w], "counts": counts["counts"].decode("ascii")}},
        {"id": 3, "image_id": 5, "category_id": 3, "iscrowd": 0, "area": 24.0,
         "segmentation": uncompressed},
    ]
    records, names = read_coco_segmentation(_coco_file(tmp_path, anns), tmp_path / "images")
    assert names == ["background", "three", "seven"]  # categories by id: 3 -> 1, 7 -> 2
    label = coco_label_map(records[0])
    assert label.shape == (h, w)
    assert (label[3:7, 3:12] == 2).all()           # polygon interior: "seven"
    assert (label[12:16, 20:26] == 1).all()        # the object in the crowd keeps its label
    rest = crowd.astype(bool) & ~small.astype(bool)
    assert (label[rest] == 255).all()              # crowd: ignore
    assert (label[0:2] == 0).all() and (label[8:10] == 0).all()


def test_train_transform_keeps_labels_on_their_pixels():
    # Pixel value = 10 * label, so after crop and flip the two must still agree everywhere.
    label = np.random.default_rng(0).integers(0, 5, (30, 40)).astype(np.uint8)
    image = np.repeat((label * 10)[..., None], 3, axis=2).astype(np.uint8)
    for i in range(4):
        seed = tf.constant([i, 7], tf.int32)
        x, y = train_transform(image, label, seed, (48, 48), scale_range=(1.0, 1.0), flip=True)
        x, y = x.numpy(), y.numpy()
        assert x.shape == (48, 48, 3) and y.shape == (48, 48) and y.dtype == np.int32
        valid = y != 255
        np.testing.assert_array_equal(x[..., 0][valid], 10 * y[valid])
        assert (x[~valid] == 127.5).all() and (~valid).sum() == 48 * 48 - 30 * 40
        x2, y2 = train_transform(image, label, seed, (48, 48), scale_range=(1.0, 1.0))
        np.testing.assert_array_equal(y, y2.numpy())  # same seed, same example
    x, y = train_transform(image, label, tf.constant([1, 2], tf.int32), (24, 24), (0.5, 2.0))
    assert x.shape == (24, 24, 3) and set(np.unique(y.numpy())) <= {0, 1, 2, 3, 4, 255}
