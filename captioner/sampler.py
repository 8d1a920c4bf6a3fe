"""The order in which an epoch visits its examples: reproducible from (seed, epoch) alone, shared across torchrun
ranks, resumable from the middle of an epoch with another batch size or number of processes."""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .media import WorkerLoader


class EpochSampler(Sampler[int]):
    """This rank's share of an epoch's example order that depends only on (seed, epoch), after the first
    `done` examples of it.

    Like torch's DistributedSampler (the order is padded by wrapping to a multiple of `world`, and rank r
    takes every world-th index from r, so all ranks run the same number of batches), plus an offset so a run
    stopped mid-epoch resumes at the exact next example. `done` counts examples of the whole order, over all
    ranks (k batches of b on w ranks: k*b*w, the prefix they covered together), so a run may resume with
    another batch size or number of processes and still see each example of the epoch once. Without
    `weights` the order is a permutation of range(n); with them (n,) it is n draws with replacement, example
    i drawn with probability proportional to weights[i] (torch's WeightedRandomSampler, made reproducible).
    """

    def __init__(self, n: int, seed: int, epoch: int, done: int = 0, rank: int = 0, world: int = 1,
                 weights: torch.Tensor | None = None):
        self.n, self.seed, self.epoch, self.done, self.rank, self.world = n, seed, epoch, done, rank, world
        padded = math.ceil(n / world) * world  # the order's length once padded for `world` ranks
        self.per_rank = math.ceil(max(padded - done, 0) / world)
        self.weights = None if weights is None or bool((weights == weights[0]).all()) else weights.double()

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        order += order[: math.ceil(self.n / self.world) * self.world - self.n]  # pad to a multiple of world
        rest = order[self.done:]
        if rest:  # a `done` from another world size: pad the rest again, wrapping around it
            rest = list(itertools.islice(itertools.cycle(rest), self.per_rank * self.world))
        return iter(rest[self.rank::self.world])

    def __len__(self) -> int:
        return self.per_rank


def epoch_loader(dataset, n: int, weights: torch.Tensor | None, *, batch_size: int, seed: int, epoch: int,
                 done: int, rank: int, world: int, num_workers: int, device: torch.device,
                 collate_fn=None) -> WorkerLoader:
    """One epoch's DataLoader over `dataset` (n examples, drawn by `weights` (n,) if given) for this rank,
    after the first `done` examples of the epoch's order. DataLoader draws worker seeds from a private
    generator, not from the global RNG, whose state is saved for exact resume (a resumed epoch creates one
    iterator more than a straight run)."""
    sampler = EpochSampler(n, seed, epoch, done, rank, world, weights=weights)
    return WorkerLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed + epoch))
