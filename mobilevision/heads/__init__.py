"""Heads: take named feature maps, return raw outputs. A head never knows which backbone fed it."""

from mobilevision.heads.classifier import classifier_head

__all__ = ["classifier_head"]
