"""Pick the torch device a command runs on."""

from __future__ import annotations

import torch

from medal.runtime.errors import MedalError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise MedalError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedalError("--device cuda was asked for, but torch sees no CUDA device here.")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (Hopper runs bf16 matmuls at full rate); plain fp32 on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
