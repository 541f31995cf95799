"""COCO reader: category id mapping, box clipping and dropping, crowd flags, bad annotations."""

import json

import numpy as np
import pytest

from mobilevision.data.coco import read_coco
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


def _write(tmp_path, annotations, images=None, categories=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.jpg").write_bytes(b"")  # existence is what the reader checks
    data = {"images": images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
            "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_boxes_are_clipped_or_dropped_and_counted(tmp_path):
    path = _write(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 90, "bbox": [90, 40, 20, 20]},   # clipped
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},      # zero width
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, -3]},     # inverted
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [200, 10, 5, 5]},     # outside
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 25], "iscrowd": 1},
    ])
    ds = read_coco(path, tmp_path / "img")
    rec = ds.records[0]
    np.testing.assert_allclose(rec.boxes, [[0.8, 0.9, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]], atol=1e-6)
    assert rec.labels.tolist() == [2, 1]              # category 90 -> label 2, 1 -> 1
    assert rec.iscrowd.tolist() == [False, True]
    assert ds.dropped == {"zero or negative size": 2, "outside the image": 1} and ds.clipped == 1


def test_unknown_category_is_an_error_naming_the_annotation_or_skipped(tmp_path):
    path = _write(tmp_path, [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match=r"instances.json: annotation 7: category_id 3 is not"):
        read_coco(path, tmp_path / "img")
    ds = read_coco(path, tmp_path / "img", skip_invalid=True)
    assert ds.skipped == {"annotation 7": ds.skipped["annotation 7"]} and len(ds.records[0].boxes) == 0


def test_missing_image_file_and_bad_bbox_are_errors(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
              {"id": 2, "file_name": "missing.jpg", "width": 100, "height": 50}]
    path = _write(tmp_path, [], images=images)
    with pytest.raises(DatasetError, match=r"image 2: file .*missing.jpg not found"):
        read_coco(path, tmp_path / "img")
    assert [r.image_id for r in read_coco(path, tmp_path / "img", skip_invalid=True).records] == [1]
    path = _write(tmp_path, [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5]}])
    with pytest.raises(DatasetError, match=r"annotation 3: bbox must be 4 finite numbers"):
        read_coco(path, tmp_path / "img")


def test_missing_or_malformed_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found"):
        read_coco(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"bad.json: not valid JSON \(line 1"):
        read_coco(tmp_path / "bad.json", tmp_path)
    (tmp_path / "other.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="list under 'annotations'"):
        read_coco(tmp_path / "other.json", tmp_path)
