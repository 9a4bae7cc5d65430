"""Seeding, deterministic CUDA, and the random-number state a resumed run must continue from.

`--seed` fixes every generator a run draws from: python's `random`, numpy's global one, torch's
CPU and CUDA generators (the student's initial weights, dropout if a student has any), and the
data order, which has a `torch.Generator` of its own. On CPU that already makes a run
repeatable bit for bit. On CUDA, cuDNN's autotuner and a few kernels that accumulate with
atomics make it close but not identical; `--deterministic` turns those off (PyTorch's
"Reproducibility" notes).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from --seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """On: deterministic algorithms only (an error for an op that has none), no cuDNN autotuning.
    Off: torch's defaults (StudentStep then turns cuDNN's autotuner on).

    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it first creates a handle, so this must run
    before the first CUDA matrix product; `run_distill` calls it before building anything.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


class GlobalMean(nn.Module):
    """Global average pooling as a mean: the same function as AdaptiveAvgPool2d(1), whose CUDA
    backward accumulates with atomics and so is refused under deterministic algorithms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def deterministic_pooling(model: nn.Module) -> nn.Module:
    """Swap every AdaptiveAvgPool2d(1) (timm's global pool) for GlobalMean, in place.

    Parameter-free, so the initial weights and checkpoints are unchanged.
    """
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalMean())
    return model


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """Every generator a training epoch can draw from, as plain values and tensors
    (loadable with torch.load's weights_only). CUDA: the training device's generator, the only
    one a process draws from (under torchrun each rank has its own device)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "data_order": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """Put every generator back where `rng_state` found it."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["data_order"])
