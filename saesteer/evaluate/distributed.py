"""Sharding work across processes started by `torchrun` (one shard per rank)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: list) -> list:
        return items[self.rank::self.world]


def current_shard() -> Shard:
    """The rank and world size torchrun set (a single shard without torchrun)."""
    return Shard(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def barrier(shard: Shard) -> None:
    """Wait for every rank (gloo process group, created on first use)."""
    if shard.world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
