"""tf.data building blocks shared by the tasks: decoding files robustly, per-example seeds.

Images decode in one of two ways (`data.decode`):

- "graph" (the default): TensorFlow ops inside tf.data (`tf.io.read_file`, `decode_jpeg` /
  `decode_image`, the EXIF orientation as a transpose), so the pipeline holds no GIL, runs where
  Python cannot (a TPU's input pipeline) and can be saved. It only reads files the one-time
  verification pass (`mobilevision.data.verify`) found to decode to the very pixels Pillow gives;
  a file TensorFlow would decode differently is read from a lossless copy that pass made, and an
  unreadable one is skipped there, with its path and reason, before training starts.
- "python": every file through Pillow in `tf.numpy_function` (`decode.read_image`), the path the
  verification pass takes as its reference.

Either way a task builds its table with `image_files(paths, mode)`, puts it in
`from_tensor_slices`, and calls `decode_file(row) -> (image (h, w, 3) uint8, ok)`.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from mobilevision.config import DECODE_MODES
from mobilevision.data.decode import ImageDecodeError, read_image
from mobilevision.data.skips import SKIPPED

AUTOTUNE = tf.data.AUTOTUNE
# libjpeg's accurate integer IDCT: the one Pillow uses, so a JPEG decodes here to Pillow's pixels
# exactly (TF's default, INTEGER_FAST, differs from Pillow by up to 6 levels on 60% of pixels).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
_EMPTY = np.zeros((1, 1, 3), np.uint8)


def _decode_or_skip(path: bytes):
    path = path.decode("utf-8")
    try:
        return read_image(path), True
    except ImageDecodeError as e:
        SKIPPED.add(path, e.reason)
        return _EMPTY, False


# Graph path ---------------------------------------------------------------------------------------


def orient(image, orientation):
    """Apply an EXIF orientation in TensorFlow ops, as Pillow's `ImageOps.exif_transpose` does.

    Args:
      image: (h, w, c) tensor as stored in the file.
      orientation: int32 scalar 1..8 (anything else is treated as 1).
    Returns:
      (h, w, c) for 1-4, (w, h, c) for 5-8: the picture as a viewer shows it.
    """
    t = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731  (mirror on the main diagonal)
    branches = [
        lambda: image,                             # 1: as stored
        lambda: tf.reverse(image, [1]),            # 2: mirrored left-right
        lambda: tf.reverse(image, [0, 1]),         # 3: turned 180
        lambda: tf.reverse(image, [0]),            # 4: mirrored top-bottom
        lambda: t(image),                          # 5: transposed
        lambda: tf.reverse(t(image), [1]),         # 6: turn 90 clockwise to display
        lambda: tf.reverse(t(image), [0, 1]),      # 7: transverse
        lambda: tf.reverse(t(image), [0]),         # 8: turn 90 counter-clockwise to display
    ]
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    return tf.switch_case(tf.cast(index, tf.int32), branches)


def graph_decode_image(contents, orientation):
    """Encoded bytes (scalar string tensor) and EXIF orientation (int32 scalar) -> (h, w, 3)
    uint8 RGB, in TensorFlow ops: JPEG with libjpeg's accurate IDCT, PNG/BMP/GIF with
    `decode_image` (first frame). A truncated JPEG or PNG is an InvalidArgumentError (TF's
    defaults: `try_recover_truncated=False`, `acceptable_fraction=1`). The verification pass
    runs this very function and compares it with Pillow before a file is trusted to it."""
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image = orient(tf.ensure_shape(image, [None, None, 3]), orientation)
    return tf.ensure_shape(image, [None, None, 3])


def graph_decode_label(contents):
    """Encoded 8-bit grayscale PNG (scalar string tensor) -> (h, w) uint8 values. Only exact for
    such files: the verification pass routes a palette or 16-bit label map through a copy."""
    return tf.io.decode_png(contents, channels=1)[..., 0]


def content_fingerprint(contents):
    """Scalar string tensor -> int64 FarmHash fingerprint of the bytes (`to_hash_bucket_fast`,
    stable across runs and machines; 12 GB/s measured, 8 us for 100 kB). The verification pass
    records it, and the pipeline compares it before decoding, to catch a file changed since."""
    return tf.strings.to_hash_bucket_fast(contents, 2**63 - 1)


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
