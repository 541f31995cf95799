"""The input pipeline: `build_dataset` (one skeleton for every task and format) and its parts:
decoding files robustly, sharding, per-example seeds.

Images decode in one of two ways (`data.decode`):

- "graph" (the default): TensorFlow ops inside tf.data (`tf.io.read_file`, `decode_jpeg` /
  `decode_image`, the EXIF orientation as a transpose), so the pipeline holds no GIL, runs where
  Python cannot (a TPU's input pipeline) and can be saved. It only reads files the one-time
  verification pass (`mobilevision.data.verify`) found to decode to the very pixels Pillow gives;
  a file TensorFlow would decode differently is read from a lossless copy that pass made, and an
  unreadable one is skipped there, with its path and reason, before training starts.
- "python": every file through Pillow in `tf.numpy_function` (`decode.read_image`), the path the
  verification pass takes as its reference.

Either way a source (`data.sources`) builds its table with `image_files(paths, mode)`, puts it in
`from_tensor_slices`, and its `load` calls `decode_file(row) -> (image (h, w, 3) uint8, ok)`.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from mobilevision.config import DECODE_MODES
from mobilevision.data.decode import ImageDecodeError, read_image
from mobilevision.data.graph_decode import content_fingerprint, graph_decode_image
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


def read_verified(row, decode, empty):
    """Read and decode one verified file in the graph.

    Args:
      row: {"path", "source", "nbytes", "fingerprint", "ok", ...} scalar tensors, a row of
        `image_files`.
      decode: contents (scalar string) -> decoded tensor.
      empty: the stand-in returned when ok is False.
    Returns:
      (decoded, ok bool). A file the verification skipped is not read. A file whose bytes are no
      longer the verified ones (size or fingerprint) changed since (rewritten during the run,
      say): it is skipped rather than decoded, and its path printed to stderr (a graph op:
      SKIPPED, a Python object, cannot be reached from here; the next run's verification checks
      the file again and records it there).
    """
    def read():
        contents = tf.io.read_file(row["source"])
        size = tf.strings.length(contents, unit="BYTE")
        changed = tf.not_equal(tf.cast(size, tf.int64), row["nbytes"]) | tf.not_equal(
            content_fingerprint(contents), row["fingerprint"])

        def skip():
            message = tf.strings.join([
                "mobilevision: skipped ", row["path"], " - it changed since it was verified (",
                tf.strings.as_string(row["nbytes"]), " bytes, now ", tf.strings.as_string(size),
                "); the next run verifies it again"])
            report = tf.print(message, output_stream=sys.stderr)
            with tf.control_dependencies([report]):
                return tf.identity(empty), tf.constant(False)

        return tf.cond(changed, skip, lambda: (decode(contents), tf.constant(True)))

    return tf.cond(row["ok"], read, lambda: (tf.identity(empty), tf.constant(False)))


# What the tasks call ------------------------------------------------------------------------------


def image_files(paths, mode: str = "graph") -> dict[str, np.ndarray]:
    """The table `decode_file` reads, one row per path, for `from_tensor_slices`.

    Args:
      paths: list of image file paths (str).
      mode: "graph" runs (or reuses, from its cache) the verification pass over `paths` first,
        recording the unreadable files in SKIPPED; "python" decodes each file with Pillow when
        the pipeline reaches it.
    Returns:
      {"path": (N,) str} for "python"; for "graph" also "source" (N,) str (the file to read: the
      image itself or its lossless copy), "orientation" (N,) int32, "nbytes" and
      "fingerprint" (N,) int64 (the source's verified size and `content_fingerprint`) and "ok"
      (N,) bool.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"data.decode must be one of {DECODE_MODES}, got {mode!r}")
    paths = [str(p) for p in paths]
    if mode == "python":
        return {"path": np.asarray(paths, dtype=str) if paths else np.zeros(0, str)}
    from mobilevision.data.verify import verify_images

    return verify_images(paths).table()


def decode_file(row):
    """Decode one image in a tf.data map.

    Args:
      row: a row of `image_files` (a dict of scalar tensors), or a scalar string tensor holding
        the path (decoded in Python, as "python" mode does).
    Returns:
      (image (h, w, 3) uint8 RGB with the EXIF orientation applied, ok bool scalar). ok is False
      for an unreadable file (recorded in SKIPPED with its path and reason) and then the image is
      a (1, 1, 3) stand-in to be filtered out or weighted 0.
    """
    if not isinstance(row, dict):
        return _decode_python(row)
    if "source" not in row:
        return _decode_python(row["path"])
    image, ok = read_verified(row, lambda c: graph_decode_image(c, row["orientation"]),
                              tf.constant(_EMPTY))
    return tf.ensure_shape(image, [None, None, 3]), ok


def _decode_python(path):
    """path: scalar string tensor -> (image (h, w, 3) uint8, ok bool), decoded by Pillow in
    `tf.numpy_function` (`data.decode=python`); an unreadable file gives ok=False and is recorded
    in `SKIPPED` with its path and reason when the pipeline reaches it."""
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
    seeds = seeds.map(_graph_function(lambda s: tf.cast(s % (2**31 - 1), tf.int32)))
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


def _graph_function(fn):
    """`fn` as tf.data traces it without AutoGraph's rewrite. The pipeline's functions are
    written in TensorFlow ops (`tf.cond`, `tf.while_loop`, static shapes in Python `if`s), so the
    rewrite changes nothing in the graph; it only cost time before the first step (AutoGraph
    parsed and rewrote about 70 functions, 1-2 s of the detector's pipeline set-up). A Python
    `if` on a tensor now fails when the pipeline is built, naming the line."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


# The one pipeline skeleton ------------------------------------------------------------------------


def build_dataset(source, split: str, *, training: bool, transform=None, batch_size: int = 1,
                  seed: int = 0, shuffle_buffer: int = 2048, input_context=None):
    """The tf.data pipeline of a split, for any task and any format.

    Args:
      source: a `data.sources.Source` (what the split holds and how one example is read).
      training: shuffle, drop unreadable files, augment with `transform` and batch. Otherwise the
        examples come one by one, unbatched and in record order, each with its `ok` flag: what
        evaluation and int8 calibration read.
      transform: training only, (image (h, w, 3) uint8, target, seed int32 (2,)) -> (inputs,
        targets) of one example, the task's augmentation and target encoding.
      batch_size: the global batch (`train.batch_size`); with an input_context each pipeline
        makes its per-replica share.
      seed: the run's seed: the order of every epoch and each example's augmentation seed.
      shuffle_buffer: for sources whose keys are the examples themselves (TFDS).
      input_context: training under a strategy that shards input (multi_worker, tpu): the
        tf.distribute.InputContext of this worker's pipeline, which then reads only its share
        (`shard`, before anything is read) and makes per-replica batches.

    Returns:
      (dataset, number of examples in the split). Training elements are `transform`'s outputs,
      batched (the last partial batch dropped when the split holds a full one); evaluation
      elements (image, target, ok, index).
    """
    keys, load, n = source.examples(split, input_context if training else None)
    load = _graph_function(load)
    if not training:
        return keys.map(load, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE).with_options(
            options()), n
    if source.shuffle_keys:  # the whole list, then this worker's share, before anything is read
        keys = keys.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        keys = shard(keys, n, input_context)
    ds = keys.map(load, num_parallel_calls=AUTOTUNE)
    if not source.shuffle_keys:
        ds = ds.shuffle(min(max(n, 1), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.filter(_graph_function(lambda image, target, ok, index: ok))
    ds = with_seeds(ds, seed, input_context).map(
        _graph_function(lambda example, s: transform(example[0], example[1], s)),
        num_parallel_calls=AUTOTUNE)
    ds = ds.batch(per_replica_batch(batch_size, input_context), drop_remainder=n >= batch_size)
    return ds.prefetch(AUTOTUNE).with_options(options()), n
