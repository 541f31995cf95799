"""COCO box evaluation on known cases: perfect, shifted (IoU exactly 2/3), empty, crowd, wrong
class, image subsets, the -1 convention, the results conversion and the generated shapes data;
the ground truth comes from the reader's parsed file (CocoInstances), never read again."""

import json

import numpy as np
import pytest

from mobilevision.data.image_folder import DatasetError
from mobilevision.data.coco import CocoInstances
from mobilevision.tasks.coco_eval import METRIC_NAMES, CocoEvaluator, detections_to_coco

# Non-contiguous category ids; "empty" has no ground truth at all.
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 4, "name": "empty"}, {"id": 7, "name": "square"}]
IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 160},
          {"id": 2, "file_name": "b.jpg", "width": 240, "height": 200},
          {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100}]      # a negative image
# COCO area ranges: small < 32^2 = 1024 <= medium < 96^2 = 9216 <= large.
# Widths divisible by 5, so a shift of w/5 gives IoU (w - w/5) / (w + w/5) = 2/3 exactly.
ANNOTATIONS = [
    {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
     "iscrowd": crowd}
    for i, (img, cat, box, crowd) in enumerate([
        (1, 1, [10, 10, 20, 20], 0),        # small
        (1, 7, [40, 30, 120, 100], 0),      # large
        (1, 1, [150, 100, 40, 50], 1),      # crowd region
        (2, 7, [20, 20, 50, 50], 0),        # medium
        (2, 1, [130, 20, 40, 40], 0),       # medium
        (2, 1, [10, 100, 100, 95], 0),      # large
    ], start=1)
]
NON_CROWD = [a for a in ANNOTATIONS if not a["iscrowd"]]


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco_eval") / "instances_val.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS,
                                "categories": CATEGORIES}))
    return path


@pytest.fixture(scope="module")
def evaluator(gt_file):
    return CocoEvaluator(CocoInstances.read(gt_file))


def as_detection(ann, score=1.0, dx=0.0, category_id=None):
    x, y, w, h = ann["bbox"]
    return {"image_id": ann["image_id"], "category_id": category_id or ann["category_id"],
            "bbox": [x + dx, y, w, h], "score": score}


def test_perfect_detections_score_one(evaluator):
    m = evaluator.evaluate([as_detection(a) for a in NON_CROWD])
    for name in METRIC_NAMES:        # every area range has ground truth here
        if name != "AR1":
            assert m[name] == pytest.approx(1.0), name
    # One detection per image and class: image 2 has two circles, so circle recall is 2/3.
    assert m["AR1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["per_class_AP"] == {"circle": pytest.approx(1.0), "empty": -1.0,
                                 "square": pytest.approx(1.0)}
    assert m["num_images"] == 3 and m["num_detections"] == 5
    lines = m["summary_text"].splitlines()
    assert len(lines) == 12 and lines[0].startswith(" Average Precision")
    assert "Running per image" not in m["summary_text"]


def test_indexing_and_evaluating_print_nothing(gt_file, capsys):
    m = CocoEvaluator(CocoInstances.read(gt_file)).evaluate([as_detection(a) for a in NON_CROWD])
    assert capsys.readouterr().out == ""
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_iou_two_thirds_matches_below_075_only(evaluator):
    # IoU 2/3 passes the thresholds .50 .55 .60 .65 and fails .70 ... .95: AP = 4/10.
    m = evaluator.evaluate([as_detection(a, dx=a["bbox"][2] / 5) for a in NON_CROWD])
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == 0.0
    assert m["AP"] == pytest.approx(0.4)


def test_empty_detections_are_zero_not_a_crash(evaluator):
    m = evaluator.evaluate([])
    for name in METRIC_NAMES:
        assert m[name] == 0.0, name
    assert m["per_class_AP"] == {"circle": 0.0, "empty": -1.0, "square": 0.0}
    assert m["num_detections"] == 0 and len(m["summary_text"].splitlines()) == 12


def test_detection_on_crowd_region_is_not_a_false_positive(evaluator):
    crowd = next(a for a in ANNOTATIONS if a["iscrowd"])
    # Ranked above every true positive: were it a false positive, precision would drop.
    dets = [as_detection(a, score=0.9) for a in NON_CROWD]
    assert evaluator.evaluate(dets + [as_detection(crowd, score=1.0)])["AP"] == pytest.approx(1.0)
    background = {**as_detection(crowd, score=1.0), "bbox": [150, 10, 40, 50]}
    assert evaluator.evaluate(dets + [background])["AP"] < 0.99


def test_wrong_category_scores_zero_for_that_class(evaluator):
    dets = [as_detection(a) if a["category_id"] == 7 else as_detection(a, 0.5, category_id=7)
            for a in NON_CROWD]
    per_class = evaluator.evaluate(dets)["per_class_AP"]
    assert per_class["circle"] == 0.0
    assert per_class["square"] == pytest.approx(1.0)   # its false positives all rank lower


def test_image_subset_and_the_minus_one_convention(evaluator):
    on_image_2 = [as_detection(a) for a in NON_CROWD if a["image_id"] == 2]
    assert evaluator.evaluate(on_image_2)["AP"] < 1.0          # image 1's objects are missed
    m = evaluator.evaluate(on_image_2 + [as_detection(NON_CROWD[0])], image_ids=[2])
    assert m["AP"] == pytest.approx(1.0) and m["num_images"] == 1
    assert m["num_detections"] == 3                             # the image-1 detection is left out
    assert m["APs"] == -1.0 and m["ARs"] == -1.0                 # no small object on image 2
    assert m["APm"] == pytest.approx(1.0) and m["APl"] == pytest.approx(1.0)
    assert evaluator.evaluate([], image_ids=[3])["AP"] == -1.0   # no ground truth at all


def test_bad_input_is_a_clear_error(evaluator):
    with pytest.raises(ValueError, match="category_id 2 "):
        evaluator.evaluate([as_detection(NON_CROWD[0], category_id=2)])
    with pytest.raises(ValueError, match="image_id 99"):
        evaluator.evaluate([{**as_detection(NON_CROWD[0]), "image_id": 99}])
    with pytest.raises(ValueError, match="image_ids"):
        evaluator.evaluate([], image_ids=[99])


def test_input_detections_are_not_modified(evaluator):
    dets = [as_detection(a) for a in NON_CROWD]
    before = json.dumps(dets)
    evaluator.evaluate(dets)
    assert json.dumps(dets) == before


def test_detections_to_coco_round_trip():
    category_ids = [1, 4, 7]
    ann = ANNOTATIONS[1]                                        # image 1: 200 x 160, square (7)
    x, y, w, h = ann["bbox"]
    boxes = np.array([[y / 160, x / 200, (y + h) / 160, (x + w) / 200],
                      [0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.4, 0.4]],
                     np.float32)
    out = detections_to_coco(1, boxes, np.array([0.9, 0.4, 0.0, 0.7]), np.array([3, 1, 0, 2]),
                             width=200, height=160, category_ids=category_ids)
    assert len(out) == 3                                        # the padded row is dropped
    assert [d["category_id"] for d in out] == [7, 1, 4]
    assert all(d["image_id"] == 1 for d in out) and out[0]["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(out[0]["bbox"], ann["bbox"], atol=1e-3)
    np.testing.assert_allclose(out[1]["bbox"], [20, 16, 20, 16], atol=1e-4)
    assert type(out[0]["bbox"][0]) is float and type(out[0]["category_id"]) is int
    json.dumps(out)                                             # plain Python, JSON-ready
    assert detections_to_coco(1, np.zeros((0, 4)), [], [], 200, 160, category_ids) == []
    with pytest.raises(ValueError, match="label 4"):
        detections_to_coco(1, boxes[:1], [0.9], [4], 200, 160, category_ids)


def test_generated_shapes_ground_truth_scores_one(tmp_path):
    from mobilevision.data.coco import read_coco
    from mobilevision.data.shapes import generate_detection

    generate_detection(tmp_path, num_train=4, num_val=3, image_size=96)
    ann_file = tmp_path / "annotations" / "instances_val.json"
    gt = json.loads(ann_file.read_text())
    evaluator = CocoEvaluator(CocoInstances.read(ann_file))

    # The file's own boxes as detections.
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"]]
    m = evaluator.evaluate(dets)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["num_images"] == 3 and m["num_detections"] == len(gt["annotations"])
    assert set(m["per_class_AP"]) == {c["name"] for c in gt["categories"]}

    # The same through the reader (normalized boxes, contiguous labels) and detections_to_coco.
    ds = read_coco(ann_file, tmp_path / "val" / "images")
    dets = [d for r in ds.records
            for d in detections_to_coco(r.image_id, r.boxes, np.ones(len(r.boxes)), r.labels,
                                        r.width, r.height, ds.category_ids)]
    assert evaluator.evaluate(dets)["AP"] == pytest.approx(1.0)


def test_ground_truth_is_the_parsed_file_not_read_again(tmp_path):
    """The evaluator indexes the reader's CocoInstances: the file may be gone, an annotation the
    reader skipped (skip_invalid) is not ground truth, and ids COCOeval mishandles (missing, 0,
    repeated) are renumbered on its copy."""
    annotations = [{k: v for k, v in a.items() if k != "id"} for a in ANNOTATIONS]
    annotations[0]["id"], annotations[1]["id"], annotations[3]["id"] = 0, 5, 5
    bad = {"id": 99, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": annotations + [bad],
                                "categories": CATEGORIES}))
    with pytest.raises(DatasetError, match=r"instances\.json: annotation 99: bbox must be 4 finite"):
        CocoInstances.read(path)
    instances = CocoInstances.read(path, skip_invalid=True)
    path.unlink()
    assert instances.skipped == {"annotation 99": "bbox must be 4 finite numbers [x, y, w, h], "
                                                  "got [1, 1, 5]"}
    m = CocoEvaluator(instances).evaluate([as_detection(a) for a in NON_CROWD])
    assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"instances\.json: read without checking its boxes"):
        CocoEvaluator(CocoInstances({"images": IMAGES, "annotations": [], "categories": CATEGORIES},
                                    path, fields=("segmentation",)))


def test_pr_curves_are_cocoevals_own_precision_array(evaluator):
    evaluator.evaluate([as_detection(a) for a in NON_CROWD])
    recall, curves = evaluator.pr_curves(iou=0.5)
    np.testing.assert_array_equal(recall, np.linspace(0, 1, 101))    # COCOeval's recThrs
    assert list(curves) == ["circle", "empty", "square"] and curves["empty"] is None
    # Perfect detections: precision 1 all the way to recall 1.
    for name, k in (("circle", 0), ("square", 2)):
        np.testing.assert_array_equal(curves[name], np.ones(101))
        # The very array COCOeval accumulated: IoU 0.5 is its first threshold, area 'all',
        # 100 detections.
        assert np.shares_memory(curves[name], evaluator.precision)
        np.testing.assert_array_equal(curves[name], evaluator.precision[0, :, k, 0, -1])


def test_pr_curve_of_a_hand_made_ranking(evaluator):
    squares = [a for a in NON_CROWD if a["category_id"] == 7]   # two: images 1 and 2
    miss = {**as_detection(squares[1], score=0.8), "bbox": [150, 150, 30, 30]}
    # Ranked: hit (P 1/1, R 1/2), miss (P 1/2, R 1/2), hit (P 2/3, R 2/2). COCO interpolates
    # precision to the best at any higher recall: 1 up to recall 0.5, then 2/3 up to 1.
    m = evaluator.evaluate([as_detection(squares[0], 0.9), miss, as_detection(squares[1], 0.7)])
    recall, curves = evaluator.pr_curves(iou=0.5)
    expected = np.where(recall <= 0.5, 1.0, 2 / 3)
    np.testing.assert_allclose(curves["square"], expected)
    assert m["per_class_AP50"]["square"] == pytest.approx(expected.mean())
    assert m["per_class_AP50"]["circle"] == 0.0 and m["per_class_AP50"]["empty"] == -1.0
    np.testing.assert_array_equal(curves["circle"], np.zeros(101))   # ground truth, no hits
    with pytest.raises(ValueError, match="IoU 0.52 is not among"):
        evaluator.pr_curves(iou=0.52)
