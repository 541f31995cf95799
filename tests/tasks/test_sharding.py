"""Each worker reads only its share: every task's training data built for input pipeline i of 2
(a tf.distribute InputContext, as `distribute_datasets_from_function` passes it under
multi_worker) opens only its half of the training files, the halves are disjoint and cover the
split, batches are global / 2, and the two workers' batch k together are one device's batch k,
pixel for pixel (same examples, same augmentation). The files a pipeline opens are counted with
inotify (`OpenedFiles`), whatever code decodes them."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

import mobilevision as mv
from mobilevision.data.decode import is_image_file
from mobilevision.data.pipeline import shard
from mobilevision.data.shapes import ensure_shapes
from mobilevision.data.sources import source_for
from mobilevision.tasks import build_model, training_dataset

TINY = {"num_train": 16, "num_val": 4, "seed": 0}


def _context(i, n=2):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i,
                                      num_replicas_in_sync=n)


def _one_epoch(ds) -> list:
    """Every batch of one pass over `ds`, as numpy structures."""
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in ds]


def _pipelines(cfg):
    """input_context -> (the training dataset of `cfg` for that pipeline (None: one device),
    examples in the split); the model is built once (a detector's anchors shape its targets)."""
    model = build_model(cfg)
    source = source_for(cfg)
    return lambda input_context=None: training_dataset(cfg, model, source, input_context)


def _read_by_each_worker(task, folders, opened_files):
    """task: `_pipelines(cfg)`. -> ({"single": one device's batches of one epoch of the training split, "batches":
    [pipeline i's], "opened": the image files one device opened, "shares": [pipeline i's]}).
    Every dataset is built first, so what is read only to set up (the COCO and VOC readers check
    every file's header when they parse a split) is not watched: only the epochs' reads are."""
    single, _ = task()
    shares = [task(_context(i))[0] for i in (0, 1)]
    result = {"batches": [], "shares": []}
    with opened_files(folders) as watch:
        for ds in shares:
            result["batches"].append(_one_epoch(ds))
            result["shares"].append([str(p) for p in watch.take() if is_image_file(p)])
        result["single"] = _one_epoch(single)
        result["opened"] = [str(p) for p in watch.take() if is_image_file(p)]
    return result


def _check_shares(read, photos, global_batch):
    """The two pipelines opened disjoint halves of what one device opens in an epoch (which
    holds every training photo), each file once, and made batches of global / 2 whose rows
    interleave into one device's batches: worker i's rows of batch k are rows i, i + 2, ... of
    the one-device batch k."""
    everything = set(read["opened"])
    assert {str(p) for p in photos} <= everything
    halves = read["shares"]
    for files in halves:
        assert len(files) == len(set(files)), "a file was read twice in one epoch"
    assert not set(halves[0]) & set(halves[1])
    assert set(halves[0]) | set(halves[1]) == everything  # every file, by exactly one worker
    assert len(halves[0]) == len(halves[1])
    single, batches = read["single"], read["batches"]
    assert len(batches[0]) == len(batches[1]) == len(single) > 0
    for k, whole in enumerate(single):
        for i in (0, 1):
            part = batches[i][k]
            tf.nest.assert_same_structure(part, whole)
            for got, want in zip(tf.nest.flatten(part), tf.nest.flatten(whole)):
                assert got.shape[0] == global_batch // 2
                np.testing.assert_array_equal(got, want[i::2])


def test_classifier_workers_read_disjoint_halves(shapes_folders, tiny_overrides, tmp_path,
                                                 opened_files):
    root = tmp_path / "data"  # a copy no other dataset of this process is reading ahead in
    shutil.copytree(shapes_folders, root)
    task = _pipelines(mv.load_config("shapes_classifier.yaml", tiny_overrides(root)))
    folders = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    photos = [f for d in folders for f in d.iterdir() if is_image_file(f)]
    assert len(photos) == 40
    _check_shares(_read_by_each_worker(task, folders, opened_files), photos, 8)


def test_detector_workers_read_disjoint_halves(tmp_path, opened_files):
    params = {**TINY, "image_size": 96, "texture_contrast": 0.3, "min_size_frac": 0.15}
    ensure_shapes(tmp_path, "detection", **params)
    task = _pipelines(mv.load_config("shapes_ssdlite.yaml", [
        f"data.root={tmp_path}", "model.input_size=[96,96]", "train.batch_size=4",
        *[f"data.shapes.{k}={v}" for k, v in params.items()]]))
    folder = tmp_path / "train" / "images"
    read = _read_by_each_worker(task, [folder], opened_files)
    assert len(read["single"]) == 4
    _check_shares(read, [f for f in folder.iterdir() if is_image_file(f)], 4)


def test_segmenter_workers_read_disjoint_halves(tmp_path, opened_files):
    params = {**TINY, "image_size": 64, "texture_contrast": 0.3}
    ensure_shapes(tmp_path, "segmentation", **params)
    task = _pipelines(mv.load_config("shapes_deeplabv3.yaml", [
        f"data.root={tmp_path}", "model.input_size=[64,64]", "train.batch_size=8",
        *[f"data.shapes.{k}={v}" for k, v in params.items()]]))
    folders = [tmp_path / "JPEGImages", tmp_path / "SegmentationClass"]  # photos, label maps
    photos = [f for f in folders[0].iterdir() if f.name.startswith("train_")]
    assert len(photos) == 16
    _check_shares(_read_by_each_worker(task, folders, opened_files), photos, 8)


@pytest.mark.parametrize("n, workers", [(10, 2), (11, 2), (11, 3), (5, 4)])
def test_shards_are_equal_disjoint_and_leave_out_less_than_one_per_worker(n, workers):
    def listed():  # each worker builds its own, shuffled with the run's seed
        return tf.data.Dataset.range(n).shuffle(n, seed=0, reshuffle_each_iteration=True)

    share = n // workers
    parts = [list(shard(listed(), n, _context(i, workers)).repeat(2).as_numpy_iterator())
             for i in range(workers)]
    assert [len(p) for p in parts] == [2 * share] * workers
    for epoch in (0, 1):  # each epoch reshuffles, on every worker alike
        seen = [x for part in parts for x in part[epoch * share:(epoch + 1) * share]]
        assert len(set(seen)) == len(seen) == n - n % workers
    ds = listed()
    assert shard(ds, n, None) is ds and shard(ds, n, _context(0, 1)) is ds
