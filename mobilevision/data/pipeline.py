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


def with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Zip each element with its own int32 (2,) seed for stateless random ops; a new stream each
    epoch, the same streams for the same `seed`."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    seeds = seeds.map(lambda s: tf.cast(s % (2**31 - 1), tf.int32))
    return tf.data.Dataset.zip((ds, seeds))


def options(deterministic: bool = True) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    opts.experimental_optimization.map_parallelization = True
    return opts
