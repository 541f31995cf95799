"""Heads: take named feature maps, return raw outputs. A head never knows which backbone fed it."""

from mobilevision.heads.classifier import classifier_head
from mobilevision.heads.deeplabv3 import deeplabv3_head
from mobilevision.heads.ssdlite import ssdlite_head

__all__ = ["classifier_head", "deeplabv3_head", "ssdlite_head"]
