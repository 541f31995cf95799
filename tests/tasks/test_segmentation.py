"""Segmentation task: confusion-matrix metrics against a hand-computed case (ignore label
included), the loss ignoring 255, batches and model shapes, evaluation at each image's own
resolution with multi-scale + flip, predict's two PNGs, config errors, and a short training run."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

import mobilevision as mv
from mobilevision.config import ConfigError
from mobilevision.data.segmentation import read_label_png
from mobilevision.data.shapes import ensure_shapes
from mobilevision.api import Model
from mobilevision.data.sources import source_for
from mobilevision.tasks import build_model, segmentation, training_dataset
from mobilevision.tasks.segmentation_metrics import (ConfusionMatrixMetric, SegmentationLoss,
                                                     confusion_matrix, segmentation_scores)

PARAMS = {"num_train": 32, "num_val": 8, "image_size": 64, "seed": 0,
          "texture_contrast": 0.3}  # as shapes_deeplabv3.yaml


@pytest.fixture(scope="module")
def shapes_seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_seg_task")
    ensure_shapes(root, "segmentation", **PARAMS)
    return root


def _overrides(root, *extra):
    values = [f"data.root={root}", "model.input_size=[64,64]", "train.batch_size=8",
              "model.head.channels=32", "train.verbose=2"]
    return values + [f"data.shapes.{k}={v}" for k, v in PARAMS.items()] + list(extra)


NAMES = ["background", "circle", "square", "triangle", "star", "hexagon"]


def _cfg(root, *extra):
    return mv.load_config("shapes_deeplabv3.yaml", _overrides(root, *extra))


# By hand: 3 classes, 8 pixels of which 2 are ignored (255).
LABELS = np.array([[0, 0, 1, 255], [1, 2, 2, 255]])
PREDS = np.array([[0, 1, 1, 2], [1, 2, 0, 0]])
#   rows = truth, columns = prediction, over the 6 valid pixels:
#   class 0: (0->0), (0->1)         -> [1, 1, 0]
#   class 1: (1->1), (1->1)         -> [0, 2, 0]
#   class 2: (2->2), (2->0)         -> [1, 0, 1]
HAND_CM = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
#   IoU_c = tp / (row + column - tp): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1)
HAND_IOU = [1 / 3, 2 / 3, 1 / 2]


def test_confusion_matrix_and_miou_by_hand():
    cm = confusion_matrix(LABELS, PREDS, 3)
    assert cm.tolist() == HAND_CM
    s = segmentation_scores(cm)
    np.testing.assert_allclose(s["IoU"], HAND_IOU)
    assert s["mIoU"] == pytest.approx(0.5) and s["pixel_accuracy"] == pytest.approx(4 / 6)
    # A class in neither labels nor predictions has no IoU and does not count in the mean.
    s4 = segmentation_scores(confusion_matrix(LABELS, PREDS, 4))
    assert np.isnan(s4["IoU"][3]) and s4["mIoU"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_keras_metric_matches_the_hand_case():
    logits = np.eye(3, dtype=np.float32)[PREDS][None] * 5.0  # argmax == PREDS
    for score, expected in (("mIoU", 0.5), ("pixel_accuracy", 4 / 6)):
        metric = ConfusionMatrixMetric(3, score)
        metric.update_state(LABELS[None][:, :, :2], logits[:, :, :2])  # two updates accumulate
        metric.update_state(LABELS[None][:, :, 2:], logits[:, :, 2:])
        assert float(metric.result()) == pytest.approx(expected)
        np.testing.assert_array_equal(np.asarray(metric.cm), HAND_CM)


def test_loss_ignores_255_and_weights_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 3, 4))
    labels[0, 0, :] = 255
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    expected = nll[valid].mean()
    assert float(SegmentationLoss(3)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[0, 0, :] += 100.0  # ignored pixels: any logits, same loss
    assert float(SegmentationLoss(3)(labels, changed)) == pytest.approx(expected, rel=1e-5)
    weights = np.array([0.0, 1.0, 2.0])
    w = weights[np.where(valid, labels, 0)] * valid
    weighted = (nll * w).sum() / (w > 0).sum()
    assert float(SegmentationLoss(3, weights)(labels, logits)) == pytest.approx(weighted, rel=1e-5)


def test_model_and_training_batches(shapes_seg):
    cfg = _cfg(shapes_seg)
    assert source_for(cfg).class_names == NAMES
    model = build_model(cfg)
    assert tuple(model.output.shape) == (None, 64, 64, 6)
    scores = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)["scores"]
    assert scores.shape == (1, 64, 64, 6)
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)  # decoded: probabilities
    images, labels = next(iter(training_dataset(cfg, model)[0]))
    assert images.shape == (8, 64, 64, 3) and labels.shape == (8, 64, 64)
    values = set(np.unique(labels.numpy()))
    assert values <= {0, 1, 2, 3, 4, 5, 255} and len(values - {0, 255}) > 0


def test_graph_and_python_decoding_give_the_same_batches(shapes_seg):
    """data.decode=graph (the default; palette label maps through grayscale copies) and python:
    the same pixels and the same class indices."""
    model = SimpleNamespace(input_shape=(None, 64, 64, 3))  # what the transform reads
    graph, python = (next(iter(training_dataset(_cfg(shapes_seg, f"data.decode={mode}"),
                                                model)[0])) for mode in ("graph", "python"))
    for a, b in zip(graph, python):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_evaluation_runs_at_each_images_own_resolution(shapes_seg):
    # The model takes 32 x 32; the images are 64 x 64: logits are resized back, so every
    # non-ignored pixel of the original label maps is counted once.
    cfg = _cfg(shapes_seg, "model.input_size=[32,32]")
    source = source_for(cfg)
    model = Model.from_keras(build_model(cfg), cfg, names=NAMES)
    expected = sum(int((read_label_png(r.mask_path) != 255).sum())
                   for r in source.records("val").records)
    single = segmentation.evaluate(model, source, "val", scales=[1.0], flip=False).metrics
    assert np.asarray(single["confusion_matrix"]).sum() == expected
    multi = segmentation.evaluate(model, source, "val", scales=[0.5, 1.0, 1.75], flip=True).metrics
    assert np.asarray(multi["confusion_matrix"]).sum() == expected
    assert multi["scales"] == [0.5, 1.0, 1.75] and multi["flip"] is True
    assert set(multi["per_class_IoU"]) == set(NAMES) and multi["num_examples"] == 8
    # Non-square images of other sizes come back at their own size too.
    results = model.predict([np.zeros((40, 72, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)],
                            scales=[0.75, 1.25], flip=True)
    assert [r.probabilities.shape for r in results] == [(40, 72, 6), (64, 64, 6)]
    assert [r.mask.shape for r in results] == [(40, 72), (64, 64)]
    np.testing.assert_allclose(results[0].probabilities.sum(-1), 1.0, rtol=1e-5)


def test_predict_writes_overlay_and_label_pngs(shapes_seg, tmp_path):
    cfg = _cfg(shapes_seg)
    model = Model.from_keras(build_model(cfg), cfg, names=NAMES)
    paths = [r.path for r in source_for(cfg).records("val").records[:2]]
    results = model.predict(paths + [str(tmp_path / "missing.jpg")], on_error="keep")
    assert isinstance(results[2], mv.UnreadableImage) and "error" in results[2].to_json()
    for r in results[:2]:
        r.save(tmp_path / "out")
    results = [r.to_json() for r in results]
    stems = [p.rsplit("/", 1)[-1][:-4] for p in paths]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{s}_{kind}.png" for s in stems for kind in ("label", "overlay"))
    label = read_label_png(tmp_path / "out" / f"{stems[0]}_label.png", 6)
    assert label.shape == (64, 64)
    assert results[0]["size"] == [64, 64]
    assert sum(results[0]["classes"].values()) == pytest.approx(1.0)


def test_data_summary_counts_pixels_per_class(shapes_seg):
    source = source_for(_cfg(shapes_seg))
    s = source.summary("train")
    labels = [read_label_png(r.mask_path) for r in source.records("train").records]
    assert s["images"] == 32 and not s["skipped_files"] and not s["skipped_examples"]
    assert sum(s["pixels_per_class"].values()) + s["ignored_pixels"] == 32 * 64 * 64
    for i, name in enumerate(NAMES):
        assert s["pixels_per_class"][name] == sum(int((lab == i).sum()) for lab in labels), name
    assert s["ignored_pixels"] == sum(int((lab == 255).sum()) for lab in labels) > 0
    assert s["images_without_objects"] == sum(not ((lab > 0) & (lab < 255)).any()
                                              for lab in labels)


def test_config_errors_name_the_key(shapes_seg):
    with pytest.raises(ConfigError, match="task 'segmentation' does not read data.format 'tfds'"):
        mv.load_config("shapes_deeplabv3.yaml", ["data.format=tfds", "data.tfds.name=x"])
    with pytest.raises(ConfigError, match="'train.class_weights' needs model.num_classes"):
        mv.load_config("shapes_deeplabv3.yaml", ["train.class_weights=[1,2]"])
    with pytest.raises(ConfigError, match="'model.head.aspp_rates' expects a list of integers"):
        mv.load_config("shapes_deeplabv3.yaml", ["model.head.aspp_rates=[1.5]"])
    with pytest.raises(ConfigError, match="unknown key 'eval.scale'; did you mean 'eval.scales'"):
        mv.load_config("shapes_deeplabv3.yaml", ["eval.scale=[1.0]"])
    with pytest.raises(ValueError, match="model.num_classes is 4 but .* has 6 classes"):
        source_for(_cfg(shapes_seg, "model.num_classes=4", "train.class_weights=null")).class_names


@pytest.mark.slow
def test_short_training_run_learns_and_writes_metrics(shapes_seg, tmp_path, png_size):
    from mobilevision.tasks.trainer import checkpoint_state, train

    # BatchNorm statistics that settle within a few steps, so validation reflects the weights.
    cfg = mv.load_config("shapes_deeplabv3.yaml", _overrides(
        shapes_seg, "train.epochs=3", "train.steps_per_epoch=8", "train.optimizer.learning_rate=0.01",
        "model.backbone.bn_momentum=0.5", "model.head.bn_momentum=0.5",
        "data.augment.scale_range=[1.0,1.0]", "eval.flip=true"))
    results = train(cfg, output=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(saved["per_class_IoU"]) == {"background", "circle", "square", "triangle", "star",
                                           "hexagon"}
    for key in ("mIoU", "pixel_accuracy"):
        assert isinstance(saved[key], float) and saved[key] == pytest.approx(results[key])
    assert saved["scales"] == [1.0, 1.5] and saved["flip"] is True  # the demo config's two scales
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and "val_mIoU" in rows[0]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    # Above chance: uniformly random labels score a pixel accuracy of 1/6 and an mIoU near 0.04.
    assert saved["pixel_accuracy"] > 0.5 and saved["mIoU"] > 0.1, saved
    assert checkpoint_state(tmp_path / "run" / "checkpoints" / "best.weights.h5")["monitor"] == "mIoU"
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["splits"]["val"]["images"] == 8 and "pixels_per_class" in data["splits"]["train"]
    for name in ("curves", "confusion_matrix", "per_class_IoU", "samples"):
        png_size(tmp_path / "run" / "plots" / f"{name}.png")
