"""Turn a batch of uint8 MedMNIST images into network input, on the device.

The split stays resident as uint8 at native size; each batch is gathered by index, made
3-channel (grayscale repeated), resized and normalised in a few fused tensor ops. This
replaces a DataLoader, which would be the bottleneck for 28x28 data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2 was trained with ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
MEDMNIST_MEAN = (0.5, 0.5, 0.5)  # MedMNIST's official recipe for its CNN baselines
MEDMNIST_STD = (0.5, 0.5, 0.5)
# How 28 px images are upsampled. "nearest" is pixel replication, bit-identical to PIL's NEAREST (what
# MedMNIST's "(224)" models were trained on); "bilinear" stays in float, within one grey level of PIL's
# BILINEAR, which rounds to uint8.
INTERPOLATIONS = {"bilinear": "bilinear", "nearest": "nearest-exact"}
# A timm teacher is fed as its pretrained config says, which is often bicubic (torch's, no antialias: upsampling).
TEACHER_INTERPOLATIONS = {**INTERPOLATIONS, "bicubic": "bicubic"}


def to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 array -> (N, C, H, W) uint8 tensor on the device."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


class Preprocess:
    """uint8 (B, C, h, w) -> normalised float (B, channels, size, size), channels_last on CUDA.

    channels=3 repeats grayscale to 3 channels (the paper, and every ImageNet-shaped network);
    channels=1 keeps grayscale as it is (MedMNIST's own recipe without --as_rgb).
    interpolation is a key of INTERPOLATIONS (students), or of TEACHER_INTERPOLATIONS (timm teachers).
    """

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels: int = 3, interpolation: str = "bilinear"):
        self.size, self.channels = size, channels
        self.mode = TEACHER_INTERPOLATIONS[interpolation]
        mean_t, std_t = torch.tensor(mean[:channels], device=device), torch.tensor(std[:channels], device=device)
        self.scale = (1.0 / (255.0 * std_t)).view(1, channels, 1, 1)
        self.shift = (-mean_t / std_t).view(1, channels, 1, 1)
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)  # grayscale repeated
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            if self.mode == "bilinear":
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
            else:
                x = F.interpolate(x, size=(self.size, self.size), mode=self.mode)
        x = x * self.scale + self.shift
        return x.contiguous(memory_format=self.memory_format)
