"""Box-aware augmentation for detection (tf.data side), stateless with per-example seeds.

Images are float32 (h, w, 3) in 0..255; boxes (G, 4) [ymin, xmin, ymax, xmax] normalized.
"""

from __future__ import annotations

import tensorflow as tf


def photometric(image, seed):
    """SSD photometric distortion: brightness, contrast, saturation, hue, in a fixed order."""
    s = tf.random.experimental.stateless_split(seed, 4)
    image = image / 255.0
    image = tf.image.stateless_random_brightness(image, 32.0 / 255.0, s[0])
    image = tf.image.stateless_random_contrast(image, 0.5, 1.5, s[1])
    image = tf.image.stateless_random_saturation(tf.clip_by_value(image, 0.0, 1.0), 0.5, 1.5, s[2])
    image = tf.image.stateless_random_hue(image, 0.05, s[3])
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def zoom_out(image, boxes, seed, max_ratio: float = 2.0):
    """Place the image at a random spot of a canvas up to `max_ratio` times larger, filled with
    the mean colour: small objects for the coarse anchors (SSD "expand")."""
    s = tf.random.experimental.stateless_split(seed, 2)
    ratio = tf.random.stateless_uniform([], s[0], 1.0, max_ratio)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ch, cw = tf.cast(h * ratio, tf.int32), tf.cast(w * ratio, tf.int32)
    off = tf.random.stateless_uniform([2], s[1], 0.0, 1.0)
    top = tf.cast(off[0] * (tf.cast(ch, tf.float32) - h), tf.int32)
    left = tf.cast(off[1] * (tf.cast(cw, tf.float32) - w), tf.int32)
    mean = tf.reduce_mean(image, axis=[0, 1])
    padded = tf.pad(image - mean, [[top, ch - shape[0] - top], [left, cw - shape[1] - left], [0, 0]])
    scale = tf.stack([h, w, h, w]) / tf.cast(tf.stack([ch, cw, ch, cw]), tf.float32)
    shift = tf.cast(tf.stack([top, left, top, left]), tf.float32) / tf.cast(
        tf.stack([ch, cw, ch, cw]), tf.float32)
    return padded + mean, boxes * scale + shift


def ssd_random_crop(image, boxes, labels, crowd, seed, min_object_covered=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                    area_range=(0.1, 1.0), aspect_ratio_range=(0.5, 2.0)):
    """SSD random crop: a crop covering at least a random fraction of some object, then keep the
    boxes whose centre lies inside it, re-expressed in the crop and clipped. With no boxes, or
    when no crop is found, the whole image is kept."""
    s = tf.random.experimental.stateless_split(seed, 2)
    choices = tf.constant(min_object_covered, tf.float32)
    pick = tf.random.stateless_uniform([], s[0], 0, len(min_object_covered), dtype=tf.int32)
    covered = choices[pick]
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    candidates = tf.cond(tf.shape(boxes)[0] > 0, lambda: tf.clip_by_value(boxes, 0.0, 1.0)[None],
                         lambda: whole)
    begin, size, window = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), candidates, seed=s[1], min_object_covered=covered,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=50,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    win = window[0, 0]  # [ymin, xmin, ymax, xmax] of the crop, normalized
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (cy > win[0]) & (cy < win[2]) & (cx > win[1]) & (cx < win[3])
    boxes, labels, crowd = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep), tf.boolean_mask(crowd, keep)
    hw = tf.stack([win[2] - win[0], win[3] - win[1]] * 2)
    boxes = tf.clip_by_value((boxes - tf.stack([win[0], win[1]] * 2)) / hw, 0.0, 1.0)
    return crop, boxes, labels, crowd


def random_flip(image, boxes, seed):
    """Horizontal flip with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
    return image, tf.cond(flip, lambda: flipped, lambda: boxes)
