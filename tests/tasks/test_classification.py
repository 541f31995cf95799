"""Classification task: the folder and TFDS readers, skipped corrupt images, prediction output."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import mobilevision as mv
from mobilevision.data.image_folder import DatasetError
from mobilevision.data.pipeline import build_dataset
from mobilevision.data.skips import SKIPPED
from mobilevision.data.sources import source_for
from mobilevision.tasks import training_dataset

NAMES = ["circle", "hexagon", "square", "star", "triangle"]
MODEL_64 = SimpleNamespace(input_shape=(None, 64, 64, 3))  # what the classifier's transform reads


class Task:
    """A config and its data source, with the pipelines the tests read."""

    def __init__(self, cfg):
        self.cfg, self.source = cfg, source_for(cfg)
        self.class_names = self.source.class_names if cfg.data.format == "folder" else None

    def train(self, input_context=None):
        return training_dataset(self.cfg, MODEL_64, self.source, input_context)

    def evaluation(self, split="val"):
        return build_dataset(self.source, split, training=False)


@pytest.fixture
def make_task(tiny_overrides):
    def make(root, *extra, **values):
        return Task(mv.load_config("shapes_classifier.yaml",
                                   tiny_overrides(root, **values) + list(extra)))
    return make


def test_train_batches_are_augmented_pixels_with_one_hot_labels(shapes_folders, make_task):
    task = make_task(shapes_folders)
    assert task.class_names == NAMES
    ds, n = task.train()
    assert n == 40
    images, labels = next(iter(ds))
    assert images.shape == (8, 64, 64, 3) and images.dtype.name == "float32"
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    assert labels.shape == (8, 5) and np.allclose(labels.numpy().sum(1), 1.0)


def test_eval_covers_every_image_once_in_order(shapes_folders, make_task):
    task = make_task(shapes_folders)
    ds, n = task.evaluation()
    examples = list(ds.as_numpy_iterator())
    labels = np.asarray([label for _, label, _, _ in examples])
    assert [int(i) for _, _, _, i in examples] == list(range(15))
    assert len(labels) == n == 15
    assert np.bincount(labels, minlength=5).tolist() == [3, 3, 3, 3, 3]


def test_training_order_repeats_for_the_same_seed(shapes_folders, make_task):
    first = [next(iter(make_task(shapes_folders).train()[0]))[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    other = next(iter(make_task(shapes_folders, "seed=1").train()[0]))[0].numpy()
    assert not np.array_equal(first[0], other)


def test_graph_and_python_decoding_give_the_same_batches(shapes_folders, make_task):
    """data.decode=graph (the default) and python: the same files, order and seeded crops, so the
    same pixels to the last bit."""
    graph, python = (next(iter(make_task(shapes_folders, f"data.decode={mode}").train()[0]))
                     for mode in ("graph", "python"))
    for a, b in zip(graph, python):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_corrupt_images_are_skipped_and_reported_by_path(shapes_folders, tmp_path, make_task):
    root = tmp_path / "data"
    shutil.copytree(shapes_folders, root)
    good = sorted((root / "val" / "star").iterdir())[0].read_bytes()
    truncated = root / "val" / "star" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 3])
    empty = root / "val" / "circle" / "empty.png"
    empty.write_bytes(b"")
    text = root / "val" / "circle" / "notes.jpg"
    text.write_text("not an image")
    task = make_task(root)
    ds, n = task.evaluation()
    assert n == 18  # listed
    ok = np.asarray([ok for _, _, ok, _ in ds.as_numpy_iterator()])
    assert len(ok) == 18 and ok.sum() == 15  # the three bad files: left out of every metric
    skipped = SKIPPED.items()
    for path in (truncated, empty, text):
        assert str(path) in skipped, path
    assert "truncated" in skipped[str(truncated)]


def test_num_classes_must_match_the_folders(shapes_folders, make_task):
    with pytest.raises(ValueError, match=r"model.num_classes is 3 but .*train has 5 classes"):
        make_task(shapes_folders, "model.num_classes=3")


def test_missing_split_folder_is_a_clear_error(shapes_folders, tmp_path, make_task):
    task = make_task(shapes_folders, "data.val_split=validation")
    with pytest.raises(DatasetError, match=r"validation: image folder not found"):
        task.evaluation("validation")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        make_task(tmp_path)


def _write_local_tfds(data_dir):
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c", "d", "e"])})
    rng = np.random.default_rng(0)

    def examples(n):
        return [(str(i), {"image": rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8),
                          "label": i % 5}) for i in range(n)]

    tfds.dataset_builders.store_as_tfds_dataset(
        "mv_test_shapes", "1.0.0", features, {"train": examples(16), "validation": examples(7)},
        data_dir=str(data_dir))


def test_tfds_dataset_from_local_data_dir(tmp_path, make_task):
    _write_local_tfds(tmp_path)
    task = make_task(tmp_path, **{"data.format": "tfds", "data.synthetic": "null",
                     "data.tfds.name": "mv_test_shapes", "data.tfds.data_dir": str(tmp_path),
                     "data.val_split": "validation"})
    assert task.source.class_names == ["a", "b", "c", "d", "e"]
    ds, n = task.evaluation("validation")
    heights = [image.shape[0] for image, _, ok, _ in ds.as_numpy_iterator() if ok]
    assert n == 7 and sorted(heights) == [40 + i for i in range(7)]  # each at its own size
    train, _ = task.train()
    assert next(iter(train))[0].shape == (8, 64, 64, 3)
    # Two workers: each reads an even, disjoint half (example i is 40 + i rows high), in
    # batches of 4.
    import tensorflow as tf

    from mobilevision.data.tfds_reader import load_tfds

    halves = []
    for i in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                             num_replicas_in_sync=2)
        ds, _ = load_tfds("mv_test_shapes", "train", str(tmp_path), context)
        halves.append({int(ex["image"].shape[0]) - 40 for ex in ds})
        share, n = task.train(input_context=context)
        assert n == 16 and [x.shape[0] for x, _ in share] == [4, 4]
    assert len(halves[0]) == len(halves[1]) == 8 and halves[0] | halves[1] == set(range(16))
    with pytest.raises(DatasetError, match=r"'mv_test_shapes' has no split 'test'"):
        task.evaluation("test")
    missing = source_for(mv.load_config(None, ["data.format=tfds", "data.tfds.name=imagenet2012",
                                              f"data.tfds.data_dir={tmp_path}"]))
    with pytest.raises(DatasetError, match=r"not prepared in data_dir.*Nothing is downloaded"):
        missing.class_names


def test_predict_writes_annotated_images_and_results(shapes_folders, tmp_path, make_task):
    from mobilevision.api import Model
    from mobilevision.tasks import build_model

    task = make_task(shapes_folders)
    model = Model.from_keras(build_model(task.cfg), task.cfg, names=task.class_names)
    paths = [str(p) for p in sorted((shapes_folders / "val" / "square").iterdir())[:2]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    results = model.predict(paths + [str(bad)], on_error="keep")
    assert [r.file for r in results] == paths + [str(bad)]
    for r in results[:2]:
        scores = [p["score"] for p in r.to_json()["predictions"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert abs(r.probabilities.sum() - 1.0) < 1e-4
        assert r.name in task.class_names and r.top_k(2)[0].name == r.name
        assert r.score == pytest.approx(scores[0])
        r.save(tmp_path / "out")
    assert "broken.jpg" in results[2].to_json()["file"] and results[2].error
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{p.split('/')[-1].rsplit('.', 1)[0]}.jpg" for p in paths)
    json.dumps([r.to_json() for r in results])  # serializable, as predictions.json
