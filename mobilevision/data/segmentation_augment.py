"""Segmentation augmentation in TensorFlow ops (the DeepLab recipe): random scale, pad, random crop,
flip, applied alike to the image and its label map. Stateless random ops with a per-example seed,
so a run repeats exactly for the same `seed`.

Padding: the image with 127.5, the pixel value the backbone's preprocessing maps to 0 (the mean
of its [-1, 1] range); the label map with 255, so padding is ignored by the loss.
"""

from __future__ import annotations

import tensorflow as tf

IMAGE_PAD = 127.5
LABEL_PAD = 255


def random_scale(image, label, seed, scale_range=(0.5, 2.0)):
    """Resize by one factor drawn uniformly from `scale_range`: the image bilinear, the label
    nearest. image: (h, w, 3) float32; label: (h, w, 1) int32; seed: int32 (2,)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if lo == hi == 1.0:
        return image, label
    scale = tf.random.stateless_uniform([], seed, lo, hi) if hi > lo else tf.constant(lo)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    image = tf.image.resize(image, new, method="bilinear")
    label = tf.image.resize(label, new, method="nearest")
    return image, label


def pad_and_random_crop(image, label, seed, size):
    """Pad at the bottom and right up to at least `size` = (H, W), then take a random H x W
    window. -> image (H, W, 3) float32, label (H, W, 1) int32, both with static shapes."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ph, pw = tf.maximum(size[0] - h, 0), tf.maximum(size[1] - w, 0)
    image = tf.pad(image, [[0, ph], [0, pw], [0, 0]], constant_values=IMAGE_PAD)
    label = tf.pad(label, [[0, ph], [0, pw], [0, 0]], constant_values=LABEL_PAD)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    oy = tf.random.stateless_uniform([], seeds[0], 0, h + ph - size[0] + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[1], 0, w + pw - size[1] + 1, dtype=tf.int32)
    image = image[oy:oy + size[0], ox:ox + size[1]]
    label = label[oy:oy + size[0], ox:ox + size[1]]
    return tf.ensure_shape(image, [*size, 3]), tf.ensure_shape(label, [*size, 1])


def random_flip(image, label, seed):
    """Mirror both left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def train_transform(image, label, seed, size, scale_range=(0.5, 2.0), flip=True):
    """image (h, w, 3) uint8, label (h, w) uint8, seed int32 (2,) -> (image (H, W, 3) float32
    in 0..255, label (H, W) int32 with 255 = ignore)."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)[..., None]
    image, label = random_scale(image, label, seeds[0], scale_range)
    image, label = pad_and_random_crop(image, label, seeds[1], size)
    if flip:
        image, label = random_flip(image, label, seeds[2])
    return image, label[..., 0]
