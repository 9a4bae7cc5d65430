"""MedMNIST v2's "(28)" ResNets: CIFAR-style ResNet-18/50 for native 28x28 images.

MedMNIST's own benchmark (Yang et al. 2023, `MedMNIST2D/models.py` of MedMNIST/experiments)
reports every dataset with these as well as with torchvision's ResNets on images upsampled to
224 px. They are timm's ResNet with the ImageNet stem (7x7 stride-2 convolution, max-pool)
replaced by one 3x3 stride-1 convolution, so a 28 px image keeps its resolution into the first
stage; the stages (64-128-256-512, strides 1-2-2-2), global average pool and linear head are
timm's. They cost about a quarter of the "(224)" models per image: the cheap way to run an
ablation. Registered in timm's registry, so `timm.create_model("resnet50_28", num_classes=8)`
builds one like any timm model, and `pretrained=True, pretrained_cfg_overlay=dict(file=...)`
loads weights that medal exported.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn


class ResNet28(ResNet):
    """timm's ResNet with a 3x3 stride-1 stem convolution and no max-pool."""

    def __init__(self, block: type[nn.Module], layers: list[int], in_chans: int = 3, **kwargs):
        super().__init__(block=block, layers=layers, in_chans=in_chans, **kwargs)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # the stages keep their strides; only the stem no longer downsamples
        self.feature_info = [{**info, "reduction": max(1, info["reduction"] // 4)} for info in self.feature_info]


def _cfg(**kwargs) -> dict:
    """Pretrained-config defaults: 28 px, MedMNIST's mean/std 0.5, no weights hosted anywhere."""
    return {"url": "", "num_classes": 8, "input_size": (3, 28, 28), "pool_size": (1, 1), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "first_conv": "conv1", "classifier": "fc", **kwargs}


default_cfgs = generate_default_cfgs({"resnet18_28.medmnist": _cfg(), "resnet50_28.medmnist": _cfg(),
                                     "resnet10n_28.medmnist": _cfg()})


def _create(variant: str, block: type[nn.Module], layers: list[int], pretrained: bool, **kwargs) -> ResNet28:
    return build_model_with_cfg(ResNet28, variant, pretrained, block=block, layers=layers, **kwargs)


@register_model
def resnet18_28(pretrained: bool = False, **kwargs) -> ResNet28:
    """ResNet-18 (28): BasicBlock stages [2, 2, 2, 2]; 11,172,936 parameters at 3 channels and 8 classes."""
    return _create("resnet18_28", BasicBlock, [2, 2, 2, 2], pretrained, **kwargs)


@register_model
def resnet50_28(pretrained: bool = False, **kwargs) -> ResNet28:
    """ResNet-50 (28): Bottleneck stages [3, 4, 6, 3]; 23,516,744 parameters at 3 channels and 8 classes."""
    return _create("resnet50_28", Bottleneck, [3, 4, 6, 3], pretrained, **kwargs)


@register_model
def resnet10n_28(pretrained: bool = False, **kwargs) -> ResNet28:
    """ResNet-10 (28), narrow: one BasicBlock a stage, stages 32-64-128-256 after timm's 64-channel stem.

    Not a MedMNIST model: medal's demo student, small enough to train on a 2-core CPU in seconds
    an epoch at 28 px while keeping the (28) models' full-resolution first stage.
    """
    return _create("resnet10n_28", BasicBlock, [1, 1, 1, 1], pretrained, channels=(32, 64, 128, 256), **kwargs)
