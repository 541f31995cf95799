"""COCO reader: category id mapping and crowd flags. Bad boxes, annotations, images and files:
tests/test_bad_input.py."""

import json

import numpy as np
import pytest
from PIL import Image

from mobilevision.data.coco import CocoInstances, read_coco
from mobilevision.data.image_folder import DatasetError
from mobilevision.data.shapes import generate_detection


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_det")
    generate_detection(root, num_train=12, num_val=4, image_size=96, seed=0)
    return root


def test_reads_generated_coco_with_its_own_category_ids(shapes_coco):
    ds = read_coco(shapes_coco / "annotations" / "instances_train.json", shapes_coco / "train" / "images")
    assert ds.category_ids == [1, 3, 5, 7, 9] and ds.num_classes == 5
    assert len(ds.records) == 12 and not ds.dropped and not ds.skipped
    gt = json.loads((shapes_coco / "annotations" / "instances_train.json").read_text())
    assert sum(len(r.boxes) for r in ds.records) == len(gt["annotations"])
    first = ds.records[0]
    ann = next(a for a in gt["annotations"] if a["image_id"] == first.image_id)
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose(first.boxes[0], [y / 96, x / 96, (y + h) / 96, (x + w) / 96], atol=1e-6)
    assert ds.label_to_category(first.labels[:1])[0] == ann["category_id"]
    assert all(((r.boxes >= 0) & (r.boxes <= 1)).all() for r in ds.records)


def test_category_ids_map_to_contiguous_labels_and_crowd_is_flagged(tmp_path):
    # Bad boxes, ids and files: tests/test_bad_input.py.
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 50)).save(tmp_path / "img" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 90, "bbox": [10, 5, 20, 10]},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 25], "iscrowd": 1}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = read_coco(tmp_path / "instances.json", tmp_path / "img")
    assert ds.category_ids == [1, 90] and ds.category_names == ["person", "toothbrush"]
    rec = ds.records[0]
    np.testing.assert_allclose(rec.boxes, [[0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 0.5, 0.5]], atol=1e-6)
    assert rec.labels.tolist() == [2, 1]              # category 90 -> label 2, 1 -> 1
    assert rec.iscrowd.tolist() == [False, True]
    assert ds.label_to_category(rec.labels).tolist() == [90, 1]


def test_an_annotation_without_id_is_named_by_its_index(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, "oops",
                            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5]}],
            "categories": [{"id": 1, "name": "person"}]}
    coco = CocoInstances(data, "inline.json", skip_invalid=True)
    assert coco.skipped == {
        "annotations[1]": "expected an object with image_id, category_id and its bbox",
        "annotations[2]": "category_id 2 is not among the categories [1]"}
    assert [a["bbox"] for a in coco.annotations[1]] == [[0, 0, 5, 5]]
    with pytest.raises(DatasetError, match=r"^inline\.json: annotations\[1\]: expected an object"):
        CocoInstances(data, "inline.json")
