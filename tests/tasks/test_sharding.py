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
from mobilevision.data.pipeline import shard
from mobilevision.data.shapes import ensure_shapes
from mobilevision.tasks import get_task

TINY = {"num_train": 16, "num_val": 4, "seed": 0}


def _context(i, n=2):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i,
                                      num_replicas_in_sync=n)


def _one_epoch(ds) -> list:
    """Every batch of one pass over `ds`, as numpy structures."""
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in ds]


def _read_by_each_worker(task, folders, opened_files):
    """-> (one device's batches, [batches of pipeline i], [files pipeline i opened]) of one
    epoch of the training split. Every dataset is built first: the readers parse the split
    then (COCO and VOC check every file's header), and only the epoch's reads are watched."""
    single, _ = task.build_dataset("train", training=True)
    shares = [task.build_dataset("train", training=True, input_context=_context(i))[0]
              for i in (0, 1)]
    batches, opened = [], []
    with opened_files(folders) as watch:
        for ds in shares:
            batches.append(_one_epoch(ds))
            opened.append(watch.take())
    return _one_epoch(single), batches, opened


def _check_shares(single, batches, opened, train_files, global_batch):
    train_files = {str(p) for p in train_files}
    halves = [[str(p) for p in files] for files in opened]
    for files in halves:
        assert len(files) == len(set(files)), "a file was read twice in one epoch"
        assert set(files) <= train_files
    assert not set(halves[0]) & set(halves[1])
    assert set(halves[0]) | set(halves[1]) == train_files  # every file, by exactly one worker
    assert len(halves[0]) == len(halves[1])
    # Per-worker batches of global / 2; worker i's rows of batch k are rows i, i + 2, ... of
    # the one-device batch k.
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
    task = get_task(mv.load_config("shapes_classifier.yaml", tiny_overrides(root)))
    folders = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    single, batches, opened = _read_by_each_worker(task, folders, opened_files)
    _check_shares(single, batches, opened, [f for d in folders for f in d.iterdir()], 8)


def test_detector_workers_read_disjoint_halves(tmp_path, opened_files):
    params = {**TINY, "image_size": 96, "texture_contrast": 0.3, "min_size_frac": 0.15}
    ensure_shapes(tmp_path, "detection", **params)
    task = get_task(mv.load_config("shapes_ssdlite.yaml", [
        f"data.root={tmp_path}", "model.input_size=[96,96]", "train.batch_size=4",
        *[f"data.shapes.{k}={v}" for k, v in params.items()]]))
    folder = tmp_path / "train" / "images"
    single, batches, opened = _read_by_each_worker(task, [folder], opened_files)
    assert len(single) == 4
    _check_shares(single, batches, opened, list(folder.iterdir()), 4)


def test_segmenter_workers_read_disjoint_halves(tmp_path, opened_files):
    params = {**TINY, "image_size": 64, "texture_contrast": 0.3}
    ensure_shapes(tmp_path, "segmentation", **params)
    task = get_task(mv.load_config("shapes_deeplabv3.yaml", [
        f"data.root={tmp_path}", "model.input_size=[64,64]", "train.batch_size=8",
        *[f"data.shapes.{k}={v}" for k, v in params.items()]]))
    folders = [tmp_path / "JPEGImages", tmp_path / "SegmentationClass"]
    single, batches, opened = _read_by_each_worker(task, folders, opened_files)
    train = [f for d in folders for f in d.iterdir() if f.name.startswith("train_")]
    assert len(train) == 32  # 16 photos and their label maps
    _check_shares(single, batches, opened, train, 8)


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
