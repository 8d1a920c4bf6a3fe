"""Everything torch.distributed, for training and batch captioning under torchrun (PyTorch's launcher).

One process per rank; torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. On the CPU the process group is gloo; on
CUDA it has NCCL for CUDA tensors and gloo for CPU ones, because the small collectives here (the stop check,
epoch statistics, batch's final counts) are CPU tensors, which NCCL alone cannot all-reduce. Without torchrun
every helper is a no-op on one rank, so the loops that call them need no `if world > 1` of their own.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist


class Shard(NamedTuple):
    """This process's place among the ranks."""
    rank: int = 0
    world: int = 1


def launched_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(name: str = "auto") -> torch.device:
    """The device a rank runs on: under torchrun a bare "cuda" (or auto on a GPU machine) means this rank's
    local GPU; more ranks than GPUs on a node share them."""
    from .inference import resolve_device  # (the package's inference layer: imported where used)

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and launched_world() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


# How long a collective waits for the other ranks. Long on purpose: ranks wait for another's solo work that
# can take hours (rank 0 filling the feature cache of a large training set; at the end of `captioner batch`, a
# resumed rank with little left waits for one with much left). A rank that dies is not waited for: torchrun's
# agent sees the exit and stops the others.
TIMEOUT = timedelta(days=7)


def join(device: torch.device, timeout: timedelta = TIMEOUT) -> Shard:
    """Join torchrun's process group when WORLD_SIZE > 1 (gloo on CPU; NCCL + gloo on CUDA)."""
    if launched_world() <= 1:
        return Shard()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
    return Shard(dist.get_rank(), dist.get_world_size())


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard() -> Shard:
    """(rank, world size) of this process; rank 0 of 1 when not running under torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def gather(obj, world: int) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank."""
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def from_rank_0(obj, world: int):
    """Rank 0's obj, on every rank."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank when it is true on any."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_ranks_agree(local: Callable[[], bool], world: int) -> Callable[[], bool]:
    """A stop request on any rank stops every rank at the same batch (DDP ranks must run in lockstep)."""
    return local if world == 1 else (lambda: any_rank(local(), world))


def sum_over_ranks(values: list[float], world: int, dtype: torch.dtype = torch.float64) -> list:
    """Element-wise sum over ranks; also a barrier."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=dtype)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def data_parallel(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """The module that trains: the model itself on one rank, its DistributedDataParallel wrapper on several.
    A copy model's copy embedding is unused in a batch whose captions copy nothing: DDP must look for unused
    parameters there. A frozen encoder's buffers never change: they are synced once at the start, not before every
    forward (torch 2.14's forward_sync_buffers, which replaces broadcast_buffers)."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(model.cfg.copy_nouns), forward_sync_buffers=not model.encoder.frozen)
