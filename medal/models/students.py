"""The students: any timm CNN, medal's own (28) ResNets included (`medal.models.resnet28`)."""

from __future__ import annotations

import timm
from torch import nn

import medal.models.resnet28  # noqa: F401  (registers resnet18_28, resnet50_28, resnet10n_28 with timm)
from medal.runtime.errors import MedalError


def check_student(name: str) -> str:
    if not timm.is_model(name):
        raise MedalError(f"unknown student {name!r}: pass a timm model name such as resnet50, seresnet50 or skresnet34.")
    return name


def build_student(name: str, num_classes: int, pretrained: bool = False, in_chans: int = 3) -> nn.Module:
    """A timm CNN with a fresh `num_classes` head; ImageNet weights only when asked for.

    Its initial weights come from torch's global generator: seed it first for a repeatable run.
    """
    check_student(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as exc:
        if pretrained:
            raise MedalError(f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}); drop --pretrained.") from None
        raise
