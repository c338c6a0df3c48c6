"""Data parallel: N processes started by torchrun or `accelerate launch`, one shard of requests each.

No process manager of our own: the launcher starts the processes and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `setup()` joins the process group (nccl on CUDA, gloo on
CPU) and `DistributedLM` gives lm-eval's evaluator what it needs to shard documents by rank and
gather per-sample results on rank 0 (`rank`, `world_size`, `all_gather`, `gather_object`,
`barrier`). Only rank 0 gets lm-eval's results, prints and writes files.

A model that needs several GPUs per replica (a `device_map` preset) runs one process per machine
(`--nproc-per-node 1`); the replica then spreads over that machine's GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from lm_eval.api.model import LM


@dataclass(frozen=True)
class World:
    """This process's place among the launched processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """True on the process that prints and writes results."""
        return self.rank == 0


def world_from_env() -> World:
    """The launcher's RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (a single process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")),
                 int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


def process_device(world: World, device: str | None) -> str | None:
    """The device of this process: cuda:LOCAL_RANK for a CUDA data-parallel run, else `device`."""
    import torch

    if world.size <= 1:
        return device
    if device in (None, "auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return device


def setup(device: str | None) -> World:
    """Join the process group when launched with several processes (nccl for CUDA, gloo for CPU)."""
    import torch
    import torch.distributed as dist

    world = world_from_env()
    if world.size <= 1 or dist.is_initialized():
        return world
    device = process_device(world, device)
    cuda = bool(device and device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=12))
    return world


def shared_memory(world: World, device: str) -> tuple[int | None, int]:
    """(memory available, processes loading into it) for this process's model load. On the CPU with
    several processes, every process measures before any loads and all take the least measured
    (every process must call it, so that they all decide alike) and the processes of one machine;
    else (None, 1): the load measures its own device."""
    if world.size <= 1 or device.startswith("cuda"):
        return None, 1
    import torch
    import torch.distributed as dist

    from evals.memory import available_memory_bytes

    mine = available_memory_bytes()
    least = torch.tensor([-1 if mine is None else mine], dtype=torch.int64)
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    return (None if least.item() < 0 else least.item()), world.local_size


def teardown() -> None:
    """Leave the process group (no-op for a single process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every process (no-op for a single process)."""
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def sum_counts(counts: dict[str, int], world: World) -> dict[str, int]:
    """Sum integer counters over every process (every process must call it)."""
    if world.size <= 1:
        return dict(counts)
    import torch.distributed as dist

    every = [None] * world.size
    dist.all_gather_object(every, counts)
    return {k: sum(c.get(k, 0) for c in every) for k in counts}


class DistributedLM(LM):
    """Wrap an lm-eval LM so that the evaluator shards by torch.distributed rank and gathers on rank 0."""

    def __init__(self, inner: LM, world: World):
        super().__init__()
        self.inner = inner
        self._rank, self._world_size = world.rank, world.size

    @property
    def device(self):
        """The inner LM's device (collective tensors live there: CPU for gloo, cuda:N for nccl)."""
        return getattr(self.inner, "device", "cpu")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """This rank's share of loglikelihood requests."""
        return self.inner.loglikelihood(requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """This rank's share of loglikelihood_rolling requests."""
        return self.inner.loglikelihood_rolling(requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        """This rank's share of generate_until requests."""
        return self.inner.generate_until(requests)

    def all_gather(self, tensor):
        """Concatenation of `tensor` from every rank, in rank order (a 0-d tensor gives a vector)."""
        import torch
        import torch.distributed as dist

        tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_object(self, obj, dst=0):
        """List of `obj` from every rank on `dst`, None elsewhere."""
        import torch.distributed as dist

        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        import torch.distributed as dist

        dist.barrier()

    def __getattr__(self, name):
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)
