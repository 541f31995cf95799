"""Classifier head: global average pooling, dropout, `predictions` (named as keras.applications)."""

from __future__ import annotations

import keras
from keras import layers

def classifier_head(feature, num_classes: int, dropout: float = 0.2, weight_decay: float = 0.0):
    """Args: feature (N, h, w, C), the one map the config's tap gives (any stride).

    Returns (N, num_classes) class probabilities. The softmax runs in float32 even under mixed
    precision, so probabilities and the loss stay accurate.
    """
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(feature)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg,
                        dtype="float32", name="predictions")(x)
