"""What every training loop shares: one optimisation step, and the running statistics of an epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import distributed


@dataclass
class EpochStats:
    loss_sum: float = 0.0  # sum over batches of (mean batch loss * tokens)
    tokens: int = 0
    batches: int = 0  # batches done in this epoch, including those before a resume
    grad_norm_sum: float = 0.0  # sum over batches of the global gradient norm before clipping
    reward_sum: float = 0.0  # objective "cider": sum of the sampled captions' CIDEr-D
    samples: int = 0  # objective "cider": captions sampled
    stopped: bool = False

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1)

    @property
    def grad_norm(self) -> float:
        return self.grad_norm_sum / max(self.batches, 1)

    @property
    def reward(self) -> float:
        return self.reward_sum / max(self.samples, 1)

    def summed(self, world: int) -> "EpochStats":
        """The epoch's statistics over all ranks (the grad norm: their mean)."""
        if world == 1:
            return self
        loss, tokens, norms, reward, samples = distributed.sum_over_ranks(
            [self.loss_sum, float(self.tokens), self.grad_norm_sum, self.reward_sum, float(self.samples)], world)
        return EpochStats(loss, int(tokens), self.batches, norms / world, reward, int(samples), self.stopped)

    def add(self, loss: torch.Tensor, tokens: int, grad_norm: float) -> None:
        self.loss_sum += loss.item() * tokens
        self.tokens += tokens
        self.grad_norm_sum += grad_norm
        self.batches += 1


def selection_key(record: dict, unvalidated: list[float]) -> list[float]:
    """Model selection, compared as a list: val BLEU-4 of generated captions, ties broken by val loss; without
    validation, the objective's own `unvalidated` key."""
    if "BLEU-4" in record:
        return [record["BLEU-4"], -record["val_loss"]]
    return unvalidated


def optimisation_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                      grad_clip: float) -> float:
    """Backpropagate `loss`, clip the global gradient norm to `grad_clip` (0 = no clipping), step. Returns the
    norm before clipping, which is logged: growing norms are the early sign of exploding gradients."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    return float(norm)
