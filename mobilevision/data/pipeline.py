"""tf.data building blocks shared by the tasks: decoding files robustly, per-example seeds."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mobilevision.data.decode import ImageDecodeError, read_image
from mobilevision.data.skips import SKIPPED

AUTOTUNE = tf.data.AUTOTUNE
_EMPTY = np.zeros((1, 1, 3), np.uint8)


def _decode_or_skip(path: bytes):
    path = path.decode("utf-8")
    try:
        return read_image(path), True
    except ImageDecodeError as e:
        SKIPPED.add(path, e.reason)
        return _EMPTY, False


def decode_file(path):
    """path: scalar string tensor -> (image (h, w, 3) uint8, ok bool). Decoding runs in Pillow
    (it refuses truncated files instead of filling them grey); an unreadable file gives ok=False
    and is recorded in `SKIPPED` with its path and reason."""
    image, ok = tf.numpy_function(_decode_or_skip, [path], [tf.uint8, tf.bool], stateful=False)
    image.set_shape([None, None, 3])
    ok.set_shape([])
    return image, ok


def with_seeds(ds: tf.data.Dataset, seed: int, input_context=None) -> tf.data.Dataset:
    """Zip each element with its own int32 (2,) seed for stateless random ops; a new stream each
    epoch, the same streams for the same `seed`. With the `input_context` the examples were
    sharded with (`shard`), the stream is sharded the same way: example j of input pipeline i
    is example i + j * N of the epoch, and gets that example's seed, as on one device."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    seeds = shard(seeds, None, input_context)
    seeds = seeds.map(lambda s: tf.cast(s % (2**31 - 1), tf.int32))
    return tf.data.Dataset.zip((ds, seeds))


def shard(ds: tf.data.Dataset, n: int | None, input_context=None) -> tf.data.Dataset:
    """This input pipeline's share of a split, taken before anything is read.

    ds: the split's `n` examples as a list (paths, record indices: nothing read yet), already
      shuffled with the run's seed, so every worker holds the same order; n=None for an
      endless stream (the augmentation seeds of `with_seeds`).
    input_context: tf.distribute.InputContext of the pipeline (None, or 1 pipeline: `ds`).
    Returns pipeline i of N: the examples at positions i, i + N, i + 2N, ... of the first
    N * (n // N). Every pipeline holds n // N examples, so the workers' epochs stay the same
    length (up to N - 1 examples an epoch, different ones each epoch, are left out; with
    `drop_remainder` one device leaves out at least as many), and global batch k, gathered
    from per-replica batches of `per_replica_batch`, holds one device's batch k
    (when no file is skipped as unreadable)."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return ds
    count, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if n is not None:
        ds = ds.take(n // count * count)
    return ds.shard(count, index)


def per_replica_batch(global_batch: int, input_context=None) -> int:
    """The batch one pipeline makes: `global_batch` (the config's train.batch_size) with no
    `input_context`, else its share per replica (global batch / replicas)."""
    if input_context is None:
        return global_batch
    return input_context.get_per_replica_batch_size(global_batch)


def options(deterministic: bool = True) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    opts.experimental_optimization.map_parallelization = True
    return opts
