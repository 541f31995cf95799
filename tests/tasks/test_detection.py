"""Detection task: model and anchors agree, the input pipeline encodes targets, augmentation
moves boxes with pixels, and decoding + NMS + COCOeval give AP 1 on perfect outputs."""

import numpy as np
import pytest
import tensorflow as tf

import mobilevision as mv
from mobilevision.api import Model
from mobilevision.data import detection_augment as aug
from mobilevision.data.shapes import ensure_shapes
from mobilevision.data.sources import source_for
from mobilevision.ops.matcher import encode_targets
from mobilevision.tasks import build_model, detection, training_dataset

PARAMS = {"num_train": 24, "num_val": 8, "image_size": 128, "seed": 0,
          "texture_contrast": 0.3, "min_size_frac": 0.15}  # as shapes_ssdlite.yaml
NAMES = ["circle", "square", "triangle", "star", "hexagon"]


@pytest.fixture(scope="module")
def shapes_det(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_det")
    ensure_shapes(root, "detection", **PARAMS)
    return root


def _cfg(root, *extra):
    overrides = [f"data.root={root}", "model.input_size=[128,128]", "train.batch_size=4"]
    overrides += [f"data.shapes.{k}={v}" for k, v in PARAMS.items()]
    return mv.load_config("shapes_ssdlite.yaml", overrides + list(extra))


@pytest.fixture(scope="module")
def detector(shapes_det):
    """(config, an untrained detector of it), built once."""
    cfg = _cfg(shapes_det)
    return cfg, build_model(cfg)


def test_model_outputs_one_row_per_anchor_and_predict_decodes(detector):
    cfg, model = detector
    anchors = model.decoder.anchors
    images = np.zeros((1, 128, 128, 3), np.float32)
    raw = model(images)
    assert raw["boxes"].shape == (1, len(anchors), 4)
    assert raw["classes"].shape == (1, len(anchors), 6)  # 5 shapes + background
    decoded = model.predict(images, verbose=0)
    assert {k: v.shape for k, v in decoded.items()} == {
        "boxes": (1, 100, 4), "classes": (1, 100), "scores": (1, 100), "count": (1,)}
    assert all(v.dtype == np.float32 for v in decoded.values())
    # The demo's three taps and the four extras: 3 anchors on the finest map, 6 on the others.
    assert detection.anchor_generator(cfg).num_anchors_per_location(
        len(model.decoder.map_sizes)) == [3, 6, 6, 6, 6, 6, 6]
    assert source_for(cfg).class_names == NAMES


def test_training_batches_carry_encoded_targets(detector):
    cfg, model = detector
    ds, n = training_dataset(cfg, model)
    images, targets = next(iter(ds))
    num_anchors = len(model.decoder.anchors)
    assert n == 24 and images.shape == (4, 128, 128, 3)
    assert targets["boxes"].shape == (4, num_anchors, 4)
    assert targets["classes"].shape == (4, num_anchors)
    classes = targets["classes"].numpy()
    assert classes.max() <= 5 and classes.min() >= -1
    assert (classes > 0).sum() > 0  # objects were matched to anchors


def test_graph_and_python_decoding_give_the_same_batches(shapes_det, detector):
    """data.decode=graph (the default) and python: the same pixels, boxes and targets."""
    _, model = detector
    graph, python = (next(iter(training_dataset(_cfg(shapes_det, f"data.decode={mode}"), model)[0]))
                     for mode in ("graph", "python"))
    np.testing.assert_array_equal(graph[0].numpy(), python[0].numpy())
    for key in ("boxes", "classes"):
        np.testing.assert_array_equal(graph[1][key].numpy(), python[1][key].numpy())


def test_flip_and_zoom_out_move_boxes_with_the_pixels():
    image = np.zeros((40, 60, 3), np.float32)
    image[10:20, 5:15] = 255.0  # a white box at y 10..20, x 5..15
    boxes = tf.constant([[10 / 40, 5 / 60, 20 / 40, 15 / 60]])

    def box_pixels(img, box):
        h, w = img.shape[:2]
        y0, x0, y1, x1 = (np.asarray(box) * [h, w, h, w]).round().astype(int)
        return img[y0:y1, x0:x1]

    for seed in range(6):
        s = tf.constant([seed, 1])
        flipped, fboxes = aug.random_flip(tf.constant(image), boxes, s)
        assert box_pixels(flipped.numpy(), fboxes[0].numpy()).min() == 255.0
        zoomed, zboxes = aug.zoom_out(tf.constant(image), boxes, s, 3.0)
        patch = box_pixels(zoomed.numpy(), zboxes[0].numpy())
        assert patch.size and patch.mean() > 250.0


def test_ssd_crop_keeps_boxes_inside_the_crop():
    image = tf.random.stateless_uniform((100, 100, 3), (1, 2), 0, 255)
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.8]])
    labels, crowd = tf.constant([1, 2]), tf.constant([False, False])
    for seed in range(10):
        crop, b, l, c = aug.ssd_random_crop(image, boxes, labels, crowd, tf.constant([seed, 3]))
        b = b.numpy()
        assert crop.shape[0] > 0 and crop.shape[1] > 0
        assert ((b >= 0) & (b <= 1)).all() and len(b) == len(l.numpy()) == len(c.numpy())
    empty = aug.ssd_random_crop(image, tf.zeros((0, 4)), tf.zeros((0,), tf.int32),
                                tf.zeros((0,), bool), tf.constant([0, 0]))
    assert empty[1].shape == (0, 4)


def _perfect_model(cfg, model, records):
    """An API Model whose runtime answers each image, in the order the evaluation reads them
    (`records`), with the model's decoder applied to the raw outputs that encode its ground
    truth exactly: evaluation then runs decoding, NMS, results, category ids and COCOeval."""
    anchors = model.decoder.anchors
    raw = []
    for r in records:
        box_t, cls_t = (np.asarray(t) for t in encode_targets(anchors, r.boxes, r.labels))
        logits = np.full((len(anchors), 6), -10.0, np.float32)
        logits[np.arange(len(anchors)), np.maximum(cls_t, 0)] = 10.0
        raw.append((box_t, logits))

    def run(images):
        batch = [raw.pop(0) for _ in range(len(images))]
        decoded = model.decoder({"boxes": tf.constant(np.stack([b for b, _ in batch])),
                                 "classes": tf.constant(np.stack([c for _, c in batch]))})
        return {k: v.numpy() for k, v in decoded.items()}

    return Model(run, task="detection", names=NAMES, input_size=(128, 128), config=cfg)


def test_perfect_outputs_decode_to_ap_1(detector):
    cfg, model = detector
    source = source_for(cfg)
    evaluation = detection.evaluate(_perfect_model(cfg, model, source.records("val").records),
                                    source, "val", batch_size=3)
    assert evaluation.metrics["AP50"] == pytest.approx(1.0)
    assert evaluation.metrics["AP"] > 0.95  # box codes survive the round trip to pixels
    assert len(evaluation.files["detections_val.json"]) >= sum(
        len(r.boxes) for r in source.records("val").records)


def test_an_unreadable_val_image_is_left_out_of_coco_eval(shapes_det, detector, tmp_path):
    """A val image that cannot be decoded gets no detections; it must not count as missing all
    of its boxes (AP stays 1 for otherwise perfect outputs) nor as an evaluated image."""
    import shutil

    from mobilevision.data.skips import SKIPPED

    _, model = detector
    root = tmp_path / "data"
    shutil.copytree(shapes_det, root)
    cfg = _cfg(root)
    source = source_for(cfg)
    records = source.records("val").records
    bad = records[2]
    data = open(bad.path, "rb").read()
    open(bad.path, "wb").write(data[: len(data) // 3])  # a truncated JPEG: header intact
    readable = [r for r in records if r is not bad]
    metrics = detection.evaluate(_perfect_model(cfg, model, readable), source, "val").metrics
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["num_examples"] == len(records) - 1
    assert "truncated" in SKIPPED.items()[str(bad.path)]


@pytest.mark.slow
def test_short_training_run_writes_coco_metrics(shapes_det, tmp_path, png_size):
    import csv
    import json

    from mobilevision.tasks.trainer import checkpoint_state, train

    overrides = [f"data.root={shapes_det}", "model.input_size=[128,128]", "train.batch_size=8",
                 "train.epochs=2", "train.eval_every=1", "train.verbose=2"]
    overrides += [f"data.shapes.{k}={v}" for k, v in PARAMS.items()]
    cfg = mv.load_config("shapes_ssdlite.yaml", overrides)
    results = train(cfg, output=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert isinstance(saved[key], float), key
    assert set(saved["per_class_AP"]) == set(NAMES)
    assert saved["num_examples"] == 8 and saved["AP"] == pytest.approx(results["AP"])
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_AP" in rows[0] and "val_AP50" in rows[0]
    assert checkpoint_state(tmp_path / "run" / "checkpoints" / "best.weights.h5")["monitor"] == "AP"
    assert set(saved["per_class_AP50"]) == set(saved["per_class_AP"])
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["splits"]["train"]["images"] == 24 and data["splits"]["val"]["images"] == 8
    for name in ("curves", "pr_curve", "per_class_AP", "samples"):
        png_size(tmp_path / "run" / "plots" / f"{name}.png")
    assert len(json.loads((tmp_path / "run" / "detections_val.json").read_text())) > 0


def _write_tfds_coco(data_dir, coco_dataset):
    """A TFDS dataset with the features of TFDS `coco/2017`, made from the shapes records."""
    import tensorflow_datasets as tfds

    from mobilevision.data.decode import read_image

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "image/id": np.int64,
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(), "is_crowd": np.bool_, "area": np.int64,
            "label": tfds.features.ClassLabel(names=coco_dataset.category_names)})})

    def examples(records):
        for r in records:
            yield str(r.image_id), {
                "image": read_image(r.path), "image/id": r.image_id,
                "objects": {"bbox": r.boxes, "is_crowd": r.iscrowd, "label": r.labels - 1,
                            "area": (r.boxes[:, 2:] - r.boxes[:, :2]).prod(1).astype(np.int64)}}

    tfds.dataset_builders.store_as_tfds_dataset(
        "mv_test_coco", "1.0.0", features,
        {"train": list(examples(coco_dataset.records[:8])),
         "val": list(examples(coco_dataset.records[:4]))}, data_dir=str(data_dir))


def test_tfds_coco_layout_trains_and_evaluates(shapes_det, detector, tmp_path):
    from mobilevision.data.pipeline import build_dataset

    _, model = detector
    coco = source_for(_cfg(shapes_det)).records("train")
    _write_tfds_coco(tmp_path, coco)
    cfg = _cfg(shapes_det, "data.format=tfds", "data.synthetic=null",
               "data.tfds.name=mv_test_coco", f"data.tfds.data_dir={tmp_path}")
    source = source_for(cfg)
    assert source.class_names == NAMES
    images, targets = next(iter(training_dataset(cfg, model, source)[0]))
    assert images.shape == (4, 128, 128, 3) and (targets["classes"].numpy() > 0).any()
    val = source.records("val")  # in TFDS's own (shuffled) order, kept the same by the pipeline
    by_id = {r.image_id: r for r in coco.records[:4]}
    assert sorted(r.image_id for r in val.records) == sorted(by_id)
    for r in val.records:
        np.testing.assert_allclose(r.boxes, by_id[r.image_id].boxes, atol=1e-6)
        assert r.labels.tolist() == by_id[r.image_id].labels.tolist()
        assert (r.width, r.height) == (128, 128)
    assert val.instances.categories[0] == {"id": 1, "name": "circle"}
    indices = [int(i) for _, _, _, i in build_dataset(source, "val", training=False)[0]]
    assert indices == [0, 1, 2, 3]
    metrics = detection.evaluate(Model.from_keras(model, cfg, names=NAMES), source, "val").metrics
    assert metrics["num_examples"] == 4


def test_predict_gives_pixel_boxes_and_writes_annotated_images(shapes_det, tmp_path):
    cfg = _cfg(shapes_det, "model.head.score_threshold=0.0")
    model = Model.from_keras(build_model(cfg), cfg, names=NAMES)
    paths = [r.path for r in source_for(cfg).records("val").records[:2]]
    results = model.predict(paths + [str(tmp_path / "missing.jpg")], on_error="keep")
    assert [r.file for r in results] == paths + [str(tmp_path / "missing.jpg")]
    assert isinstance(results[2], mv.UnreadableImage) and "not found" in results[2].error
    for r in results[:2]:
        assert len(r) == 100, "an untrained head still scores every anchor above 0"
        assert (r.boxes >= 0).all() and (r.boxes <= 128).all()
        assert (r.boxes[:, 2:] >= r.boxes[:, :2]).all()
        for d in r.to_json()["detections"]:
            assert d["class"] in NAMES and 0 < d["score"] <= 1
        r.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.split("/")[-1] for p in paths)
    with pytest.raises(ValueError, match=r"\(h, w, 3\) uint8"):
        model.predict(np.zeros((8, 8), np.uint8))


def test_data_report_on_the_shapes_data(shapes_det, tmp_path, capsys):
    import json
    import shutil

    from mobilevision.report import write_data_report

    root = tmp_path / "data"
    shutil.copytree(shapes_det, root)
    path = root / "annotations" / "instances_train.json"
    gt = json.loads(path.read_text())
    hexagon = next(c["id"] for c in gt["categories"] if c["name"] == "hexagon")
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != hexagon]
    unreadable = gt["images"][-1]
    a0 = next(a for a in gt["annotations"] if a["image_id"] != unreadable["id"])
    gt["annotations"] += [{**a0, "id": 10**6, "bbox": [10, 10, 0, 5]},        # dropped
                          {**a0, "id": 10**6 + 1, "bbox": [-5, 10, 20, 20]}]  # clipped, kept
    path.write_text(json.dumps(gt))
    (root / "train" / "images" / unreadable["file_name"]).write_bytes(b"")
    report = write_data_report(source_for(_cfg(root)), ["train", "val"], tmp_path / "run")
    assert json.loads((tmp_path / "run" / "data.json").read_text()) == report
    train = report["splits"]["train"]
    kept = [a for a in gt["annotations"] if a["image_id"] != unreadable["id"] and a["bbox"][2] > 0]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert train["images"] == 23 and train["objects"] == len(kept)
    assert train["objects_per_class"] == {
        name: sum(names[a["category_id"]] == name for a in kept) for name in NAMES}
    assert train["objects_per_class"]["hexagon"] == 0
    assert train["images_without_objects"] == sum(
        not any(a["image_id"] == i["id"] for a in kept) for i in gt["images"][:-1])
    assert train["dropped_boxes"] == {"zero or negative size": 1} and train["clipped_boxes"] == 1
    (file, reason), = train["skipped_files"].items()
    assert file.endswith(unreadable["file_name"]) and "empty" in reason
    assert report["splits"]["val"]["images"] == 8 and report["splits"]["val"]["objects"] > 0
    assert report["warnings"] == ["class 'hexagon' has no training examples (0 objects in split "
                                  "'train'); the model cannot learn it"]
    out, err = capsys.readouterr()
    assert f"train: 23 images, {len(kept)} objects" in out and "skipped files: 1" in out
    assert "warning: class 'hexagon' has no training examples" in err


def test_predict_score_threshold_changes_the_drawing_not_the_json(shapes_det, detector, tmp_path,
                                                                   monkeypatch, capsys):
    import json

    from mobilevision.cli import main
    from mobilevision.data.decode import read_image

    monkeypatch.chdir(tmp_path)  # no runs/ folder here: labels come from the data
    cfg, model = detector
    weights = tmp_path / "untrained.weights.h5"
    model.save_weights(weights)
    image = source_for(cfg).records("val").records[0].path
    overrides = [f"data.root={shapes_det}", "model.input_size=[128,128]",
                 "model.head.score_threshold=0.0"]
    outputs = {}
    for threshold in ("0.0", "1.0"):
        assert main(["predict", "--config", "shapes_ssdlite.yaml", "--input", image, "--weights",
                     str(weights), "--output", str(tmp_path / threshold), "--score-threshold",
                     threshold, *overrides]) == 0
        (drawn,) = (tmp_path / threshold).glob("*.jpg")
        outputs[threshold] = (json.loads((tmp_path / threshold / "predictions.json").read_text()),
                              read_image(drawn).astype(np.float32))
    (dets_low, drawn_low), (dets_high, drawn_high) = outputs["0.0"], outputs["1.0"]
    assert dets_low == dets_high and dets_low[0]["detections"]    # JSON: what the config asks
    assert max(d["score"] for d in dets_low[0]["detections"]) < 1.0
    plain = np.asarray(read_image(image), np.float32)
    enlarged = np.repeat(np.repeat(plain, 2, 0), 2, 1)             # 128 px drawn at 256
    assert np.abs(drawn_high - enlarged).mean() < 3                 # nothing drawn (JPEG noise)
    assert np.abs(drawn_low - enlarged).mean() > 3                  # boxes drawn
    assert main(["predict", "--config", "shapes_classifier.yaml", "--input", image,
                 "--score-threshold", "0.5"]) == 2
    assert "--score-threshold applies to detection" in capsys.readouterr().err
    assert main(["predict", "--config", "shapes_ssdlite.yaml", "--input", image,
                 "--score-threshold", "5"]) == 2
