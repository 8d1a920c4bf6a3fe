"""Where a training run stands and how it is kept: `RunState` (everything an exact resume restores),
`save_run` (one self-describing checkpoint: the model, and for last.pt the training state of every rank),
`RunLog` (per-epoch records in metrics.jsonl and TensorBoard).

Resume is exact, also from the middle of an epoch: each epoch's example order depends on (seed, epoch)
alone (sampler.py), so a run stopped after n examples restarts at example n of the same order, with the
model, optimizer, scheduler and each rank's RNG state saved at that moment.
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from . import distributed
from .checkpoint import model_payload, save_checkpoint
from .config import TrainConfig
from .steps import EpochStats
from .vocab import Vocabulary


# What last.pt holds beyond a captioning checkpoint (save_run with an optimizer); a shipped model drops it.
TRAINING_STATE = ("optimizer_state", "scheduler_state", "rng", "rng_ranks", "batch", "epoch_done", "world_size",
                  "epoch_loss_sum", "epoch_tokens", "epoch_grad_norm_sum", "epoch_reward_sum", "epoch_samples")


@dataclass
class RunState:
    epoch: int = 0  # epochs finished
    best_score: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # the selection key
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    best_scores: dict[str, float] = field(default_factory=dict)  # the best epoch's record
    stats: EpochStats = field(default_factory=EpochStats)  # the current epoch's so far (stats.batches: its step)
    world: int = 1  # processes training together (torchrun)
    epoch_done: int = 0  # examples of the current epoch's order (all ranks) covered before this process
    resumed_batches: int = 0  # batches of the current epoch done before this process

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], world: int) -> "RunState":
        """Where a saved run stands, to go on with `world` processes (its examples are counted over all ranks,
        so another world size or batch size continues at the same example; sampler.py)."""
        stats = EpochStats(ckpt.get("epoch_loss_sum", 0.0), ckpt.get("epoch_tokens", 0), ckpt.get("batch", 0),
                           ckpt.get("epoch_grad_norm_sum", 0.0), ckpt.get("epoch_reward_sum", 0.0),
                           ckpt.get("epoch_samples", 0))
        # files from before `epoch_done` have the batches of one process
        done = ckpt.get("epoch_done", ckpt.get("batch", 0) * ckpt["train_config"]["batch_size"])
        return cls(epoch=ckpt["epoch"], best_score=list(ckpt["best_score"]), best_epoch=ckpt["best_epoch"],
                   bad_epochs=ckpt["bad_epochs"], history=list(ckpt["history"]),
                   best_scores=dict(ckpt.get("scores") or {}), stats=stats, epoch_done=done,
                   resumed_batches=stats.batches, world=world)

    def examples_done(self, batch_size: int) -> int:
        """Examples of the current epoch's order covered so far, over all ranks (what EpochSampler skips)."""
        return self.epoch_done + (self.stats.batches - self.resumed_batches) * batch_size * self.world

    def finish_epoch(self, record: dict, score: list[float]) -> bool:
        """Record a finished epoch; -> whether it is the best so far (score compared as a list)."""
        self.history.append(record)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, record["epoch"], 0
            self.best_scores = {k: v for k, v in record.items() if k not in ("epoch", "lr", "seconds")}
        else:
            self.bad_epochs += 1
        self.epoch, self.stats, self.epoch_done, self.resumed_batches = record["epoch"], EpochStats(), 0, 0
        return improved

    def summary(self, stopped: bool) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history, "best_scores": self.best_scores,
                "stopped": stopped}


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng(ckpt: dict[str, Any], rank: int, world: int, seed: int) -> None:
    """Each rank continues its own dropout stream (`rng_ranks`); resumed with another world size, rank 0 takes
    the saved rank 0's and the others distinct streams at least."""
    ranks = ckpt.get("rng_ranks") or []
    set_rng_state(ranks[rank] if len(ranks) == world else ckpt["rng"])
    if len(ranks) != world and rank:
        torch.manual_seed(seed + rank + 100_003 * ckpt["epoch"])


def save_run(path: str, model: torch.nn.Module, vocab: Vocabulary, cfg: TrainConfig, meta: dict, run: RunState,
             epoch: int, *, optimizer: torch.optim.Optimizer | None = None, scheduler=None) -> None:
    """Write a checkpoint of the run: the model and where the run stands; with `optimizer`, also the training
    state that `--resume` needs (last.pt). Every rank calls it (their RNG states are gathered); rank 0 writes."""
    rank, world = distributed.shard()
    rngs = distributed.gather(rng_state(), world) if optimizer is not None else []
    if rank:
        return
    payload = model_payload(model, vocab)
    payload.update(train_config=cfg.to_dict(), data=meta, scores=run.best_scores, history=run.history,
                   epoch=epoch, best_score=run.best_score, best_epoch=run.best_epoch, bad_epochs=run.bad_epochs)
    if optimizer is not None:
        s = run.stats
        # rng: rank 0's (what a single process resumes); rng_ranks: each rank's own dropout stream
        payload.update(optimizer_state=optimizer.state_dict(), rng=rngs[0], rng_ranks=rngs, batch=s.batches,
                       epoch_done=run.examples_done(cfg.batch_size), world_size=world, epoch_loss_sum=s.loss_sum,
                       epoch_tokens=s.tokens, epoch_grad_norm_sum=s.grad_norm_sum, epoch_reward_sum=s.reward_sum,
                       epoch_samples=s.samples,
                       scheduler_state=scheduler.state_dict() if scheduler is not None else None)
    assert optimizer is None or set(TRAINING_STATE) <= set(payload), "TRAINING_STATE lists what is saved"
    save_checkpoint(path, payload)


class RunLog:
    """Per-epoch records to <out>/metrics.jsonl, and to TensorBoard (<out>/tensorboard) when installed."""

    def __init__(self, out_dir: str, enabled: bool):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:
                self.writer = None
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
