"""torch.distributed plumbing for runs started by `torchrun` (one process per GPU).

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything here is a no-op
for a single process, so the same code path serves one GPU, several, and several machines.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: a process group exists, even of one process

    @property
    def main(self) -> bool:
        """Rank 0 alone writes run directories, checkpoints and cache metadata."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched

    def device(self, requested: torch.device) -> torch.device:
        """Each rank takes the GPU of its local rank."""
        if self.distributed and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of a picklable object, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global sample order: every size-th sample, trimmed to equal lengths.

        Equal lengths keep DDP's collective calls in step on every rank; at most size - 1
        samples of an epoch are skipped, a different few each epoch since the order is reshuffled.
        """
        per_rank = len(order) // self.size
        return order[self.rank :: self.size][:per_rank]


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), or stay single."""
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return World()
    world = World(rank=int(os.environ["RANK"]), size=int(os.environ.get("WORLD_SIZE", "1")),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), launched=True)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(dist.destroy_process_group)
    return world
