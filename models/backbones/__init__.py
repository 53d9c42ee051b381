"""Shared backbones (OSNet x0.25-x1.0, ResNet-18/50) for the ReID, attribute and de-occlusion models.

Inputs: RGB float tensors (B, 3, H, W) in [0, 1] normalised with ``IMAGENET_MEAN`` / ``IMAGENET_STD``.
"""

from .common import IMAGENET_MEAN, IMAGENET_STD, Backbone, load_state_dict_strict
from .osnet import OSNet
from .registry import create_backbone, list_backbones, register_backbone
from .resnet import ResNetBackbone

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "OSNet",
    "ResNetBackbone",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "load_state_dict_strict",
]
