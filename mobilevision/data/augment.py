"""Image augmentation and resizing in TensorFlow ops (tf.data side). Stateless random ops with a
per-example seed, so a run repeats exactly for the same `seed`."""

from __future__ import annotations

import tensorflow as tf


def random_resized_crop(image, seed, size, scale=(0.08, 1.0), ratio=(0.75, 4 / 3)):
    """Inception-style crop: a random box covering `scale` of the area with aspect in `ratio`,
    resized to `size` = (H, W). image: (h, w, 3) uint8 or float. seed: int32 (2,). -> float32."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    out = tf.image.resize(tf.cast(crop, tf.float32), size, method="bilinear", antialias=False)
    return tf.ensure_shape(out, [*size, 3])  # a static shape: fit traces the step only once


def central_crop_resize(image, size, fraction=0.875):
    """Evaluation transform: keep the central `fraction` of each side, resize to `size`. -> float32."""
    image = tf.cast(image, tf.float32)
    if fraction < 1.0:
        image = tf.image.central_crop(image, fraction)
    return tf.ensure_shape(tf.image.resize(image, size, method="bilinear", antialias=True), [*size, 3])


def random_flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed)
