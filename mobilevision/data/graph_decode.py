"""Image and label-map decoding in TensorFlow ops: what the training pipeline runs on the files
the verification pass (`mobilevision.data.verify`) checked against Pillow, and what that pass
compares Pillow with. Both `pipeline` and `verify` import from here; neither imports the other's
decoders.
"""

from __future__ import annotations

import tensorflow as tf

# libjpeg's accurate integer IDCT: the one Pillow uses, so a JPEG decodes here to Pillow's pixels
# exactly (TF's default, INTEGER_FAST, differs from Pillow by up to 6 levels on 60% of pixels).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


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
