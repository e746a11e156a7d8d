"""torchrun / DDP plumbing: process group set-up, rank queries, a resumable sharded sampler."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device_type: str, timeout: timedelta | None = None) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); False for one process.

    NCCL on CUDA, gloo on CPU. Multi-node runs work through torchrun's rendezvous flags.
    ``timeout``: how long a collective waits for the slowest process (default: torch's).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    return True


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum ``value`` over all processes in place and return it (a no-op without a process group).

    The one home of "all-reduce if a process group exists"; the tensor must live where the backend
    expects it (CPU for gloo, CUDA for NCCL).
    """
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when ``flag`` is true on at least one (an all-reduce MAX of 0/1).

    ``device`` is where the one-element tensor lives: the process's GPU under NCCL, the CPU
    under gloo. With one process it returns ``flag`` without communicating.
    """
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself without a process group); picklable, over gloo."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process; ``[obj]`` without a process group.

    ``obj`` must be picklable; meant for small results (lists of outcomes), over gloo.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class ResumableShardedSampler(torch.utils.data.Sampler[int]):
    """Indices of one process's shard of a seeded per-epoch permutation, from a given step on.

    The epoch-``e`` permutation comes from ``seed + e``; process ``r`` of ``w`` takes
    ``perm[r::w]`` (cycled to equal length), so step ``i`` of every process together covers
    ``perm[i*b*w : (i+1)*b*w]``: the same images a single process with batch ``b*w`` would see.
    ``start_batch`` skips the first batches of the epoch, which is how training resumes mid-epoch
    without replaying the data loader.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        num_replicas: int | None = None,
        rank_: int | None = None,
    ) -> None:
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_

    def batches_per_epoch(self) -> int:
        return max(1, self.dataset_len // (self.batch_size * self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.dataset_len, generator=g).tolist()
        per_epoch = self.batches_per_epoch() * self.batch_size * self.num_replicas
        while len(perm) < per_epoch:  # tiny datasets: repeat the permutation
            perm += perm[: per_epoch - len(perm)]
        shard = perm[:per_epoch][self.rank :: self.num_replicas]
        return iter(shard[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size
