"""`--max-memory`: how much memory a run may give to image data, and which splits fit in it.

A resident split costs its bytes in host RAM (the loaded array) and again as the device copy
the step gathers from: on CUDA once in each memory, on the CPU twice in host RAM. Splits are
taken in order (train, val, test) while the running total fits the budget; the rest stream.
The default budget is a stated fraction of what is free now: of the host's available RAM, and
on CUDA also of the GPU's free memory (the model, its activations and the optimizer need the rest).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from medal.runtime.errors import MedalError

DEFAULT_FRACTION = 0.5
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class MemoryBudget:
    bytes: int
    device: torch.device
    why: str  # "--max-memory 8G", or how the default was computed
    stores: Path  # where converted stores go

    def resident_cost(self, nbytes: int) -> int:
        """What keeping a split of `nbytes` resident takes out of the budget."""
        return nbytes * (2 if self.device.type == "cpu" else 1)

    def plan(self, nbytes: dict[str, int]) -> dict[str, bool]:
        """split -> True (resident) or False (streamed), in the splits' order."""
        used, resident = 0, {}
        for split, size in nbytes.items():
            resident[split] = used + self.resident_cost(size) <= self.bytes
            used += self.resident_cost(size) if resident[split] else 0
        return resident


def parse_memory(text: str) -> int:
    """'8G', '500M', '1.5GB', '64KiB' or plain bytes -> bytes (units are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match or float(match[1]) <= 0:
        raise MedalError(f"--max-memory must be a size such as 8G, 500M or 1.5GB, got {text!r}.")
    return int(float(match[1]) * UNITS[match[2]])


def available_host_bytes() -> int:
    """RAM the kernel could give this process now (MemAvailable), else the free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(max_memory: str | None, device: torch.device, stores: Path) -> MemoryBudget:
    """The budget `--max-memory` asks for, or the default: DEFAULT_FRACTION of free host (and GPU) memory."""
    if max_memory:
        return MemoryBudget(parse_memory(max_memory), device, f"--max-memory {max_memory}", stores)
    host = int(DEFAULT_FRACTION * available_host_bytes())
    budget, why = host, f"default: {DEFAULT_FRACTION:g} of available RAM"
    if device.type == "cuda":
        gpu = int(DEFAULT_FRACTION * torch.cuda.mem_get_info(device)[0])
        budget, why = min(host, gpu), f"default: {DEFAULT_FRACTION:g} of available RAM and of free GPU memory"
    return MemoryBudget(budget, device, why, stores)


def human(nbytes: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as --max-memory counts)."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            break
        nbytes /= 1024
    return f"{nbytes:.1f} {unit}"
