"""Several processes under ``torchrun`` (one per GPU): this process's rank, and what ranks share.

Without torchrun, one process of rank 0. Under torchrun, nccl with ``cuda:LOCAL_RANK`` on GPUs, gloo on
CPU; only rank 0 validates, prints and writes files while the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from sctconv.errors import SctconvError
from sctconv.inference.predict import resolve_device


@dataclass(frozen=True)
class Ranks:
    """This process among those torchrun started (rank 0 of 1 without torchrun), and its device."""

    device: str
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, prints and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: object) -> list:
        """``value`` of every rank, in rank order."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        return float(np.mean(self.gather(value)))


DISTRIBUTED_TIMEOUT = timedelta(hours=2)
"""How long ranks wait for each other, e.g. for rank 0's validation (nccl's default is 10 minutes)."""


def start_ranks(device: str) -> Ranks:
    """Join torchrun's process group when ``WORLD_SIZE`` and ``LOCAL_RANK`` are set: nccl with
    ``cuda:LOCAL_RANK`` on GPUs, gloo on CPU. Without torchrun, one process on ``device``."""
    device = resolve_device(device)
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ:
        return Ranks(device)
    local = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise SctconvError(f"torchrun started local rank {local}, but there are {torch.cuda.device_count()} GPUs")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=DISTRIBUTED_TIMEOUT)
    return Ranks(device, dist.get_rank(), dist.get_world_size())


def rank_rng_state(states: list[dict] | dict, ranks: Ranks) -> dict:
    """This rank's numpy generator state from a checkpoint's (one per rank; a bare state from before
    multi-process training counts as one rank's)."""
    states = states if isinstance(states, list) else [states]
    if len(states) != ranks.world:
        raise SctconvError(f"the checkpoint was written by {len(states)} process(es); resume it with as many "
                           f"(torchrun --nproc_per_node {len(states)}, or without torchrun for 1)")
    return states[ranks.rank]
