"""Training: teacher forcing with masked cross-entropy, backpropagation through the whole caption, gradient
clipping, per-epoch validation by BLEU-4 of *generated* (greedy) captions, early stopping, exact resume.

Shapes: B batch, T caption steps, V vocab, P positions, E feature.

Resume is exact, also from the middle of an epoch: each epoch's example order is a permutation drawn from
(seed, epoch) alone, so a run stopped after n batches restarts at batch n of the same order, with the
model, optimizer, scheduler and RNG state saved at that moment.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import model_payload, save_checkpoint
from .config import DecodeConfig, TrainConfig
from .datasets import CaptionPairs, CaptionSet, collate_pairs
from .decoding import decode
from .features import encode_images
from .media import build_transform, load_image_tensor
from .metrics import bleu_scores
from .model import CaptionModel
from .vocab import Vocabulary


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor | None = None, *,
                 pad_id: int = 0, label_smoothing: float = 0.0, alpha_c: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the real (non-PAD) target tokens, plus the doubly stochastic attention
    penalty alpha_c * mean_P (1 - sum_t alpha_t)^2 of Show, Attend and Tell.
    logits (B,T,V), targets (B,T), alphas (B,T,P) or None."""
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing)
    if alphas is not None and alpha_c > 0:
        mask = (targets != pad_id).unsqueeze(2).to(alphas.dtype)  # (B,T,1)
        coverage = (alphas * mask).sum(dim=1)  # (B,P)
        loss = loss + alpha_c * ((1.0 - coverage) ** 2).mean()
    return loss


class EpochSampler(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch), starting at position `start`."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


class _Features:
    def __init__(self, feats: torch.Tensor):
        self.feats = feats

    def __call__(self, i: int) -> torch.Tensor:
        return self.feats[i]


class _Images:
    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __call__(self, i: int) -> torch.Tensor:
        return load_image_tensor(self.paths[i], self.transform)


@dataclass
class EpochStats:
    loss_sum: float = 0.0  # sum over batches of (mean batch loss * tokens)
    tokens: int = 0
    batches: int = 0  # batches done in this epoch, including those before a resume
    stopped: bool = False

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1)


def batch_features(model: CaptionModel, inputs: torch.Tensor, cached: bool) -> torch.Tensor:
    """Batch inputs -> features (B,P,E): cached features as they are, images through the encoder (with
    gradients only where the encoder is being fine-tuned)."""
    if cached:
        return inputs.float()
    with torch.set_grad_enabled(torch.is_grad_enabled() and not model.encoder.frozen):
        return model.encode(inputs)


def train_one_epoch(model: CaptionModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, cfg: TrainConfig, *, cached: bool, sampling_prob: float = 0.0,
                    stats: EpochStats | None = None, should_stop: Callable[[], bool] = lambda: False,
                    desc: str = "train", progress: bool = True) -> EpochStats:
    """One pass of teacher forcing + BPTT. Stops early (stats.stopped) when `should_stop()` turns true."""
    stats = stats or EpochStats()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=len(loader.sampler), desc=desc, unit="cap", disable=not progress, leave=False,
               dynamic_ncols=True)
    for inputs, captions, _ in loader:
        inputs, captions = inputs.to(device), captions.to(device)  # captions (B,T+1): BOS w1 .. EOS PAD..
        feats = batch_features(model, inputs, cached)  # (B,P,E)
        out = model(feats, captions[:, :-1], sampling_prob)  # logits (B,T,V)
        targets = captions[:, 1:]  # (B,T)
        loss = caption_loss(out.logits, targets, out.alphas, label_smoothing=cfg.label_smoothing,
                            alpha_c=cfg.alpha_c)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        n_tok = int((targets != 0).sum())
        stats.loss_sum += loss.item() * n_tok
        stats.tokens += n_tok
        stats.batches += 1
        bar.update(captions.size(0))
        bar.set_postfix(loss=f"{stats.loss:.3f}")
        if should_stop():
            stats.stopped = True
            break
    bar.close()
    return stats


@torch.no_grad()
def validate(model: CaptionModel, val_set: CaptionSet, val_feats: torch.Tensor, vocab: Vocabulary,
             device: torch.device, cfg: TrainConfig, progress: bool = True) -> dict[str, float]:
    """Teacher-forced loss on every val caption, and BLEU-1..4 of greedy *generated* captions (never
    teacher-forced) against all references of each image."""
    model.eval()
    pairs = CaptionPairs(val_set.items, vocab, _Features(val_feats), cfg.max_len)
    loss_sum, tokens = 0.0, 0
    for feats, captions, _ in DataLoader(pairs, batch_size=cfg.batch_size, collate_fn=collate_pairs,
                                         generator=torch.Generator()):  # leaves the global RNG alone
        feats, captions = feats.to(device).float(), captions.to(device)
        out = model(feats, captions[:, :-1])
        n_tok = int((captions[:, 1:] != 0).sum())
        loss_sum += float(caption_loss(out.logits, captions[:, 1:])) * n_tok
        tokens += n_tok
    hyps = generate_captions(model, val_feats, vocab, device, DecodeConfig(method="greedy", max_len=cfg.max_len),
                             cfg.batch_size, progress)
    scores = bleu_scores([it.captions for it in val_set.items], hyps)
    return {"val_loss": loss_sum / max(tokens, 1), **scores}


@torch.no_grad()
def generate_captions(model: CaptionModel, feats: torch.Tensor, vocab: Vocabulary, device: torch.device,
                      decode_cfg: DecodeConfig, batch_size: int = 64, progress: bool = False) -> list[str]:
    """Best caption text for each row of feats (N,P,E)."""
    model.eval()
    out = []
    for s in tqdm(range(0, len(feats), batch_size), desc="generating", disable=not progress, leave=False):
        hyps = decode(model.decoder, feats[s: s + batch_size].to(device).float(), vocab, decode_cfg)
        out.extend(vocab.decode(h[0].tokens) for h in hyps)
    return out


@contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag the loop checks between batches (so a step is never cut in half); a second
    Ctrl-C interrupts at once. Yields a callable that says whether a stop was asked for."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        tqdm.write(f"\n{signal.Signals(signum).name}: finishing this batch, saving last.pt, then exiting "
                   f"(Ctrl-C again to quit at once)")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["stop"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def make_optimizer(model: CaptionModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the decoder at cfg.lr and the fine-tuned encoder stages (if any) at cfg.encoder_lr."""
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": cfg.lr}]
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": cfg.encoder_lr})
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "plateau":  # stepped with the val loss: halve the LR after 2 epochs without gain
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(model: CaptionModel, vocab: Vocabulary, train_set: CaptionSet, val_set: CaptionSet | None,
        cfg: TrainConfig, out_dir: str, device: torch.device, *, resume: dict | None = None,
        cache_dir: str | None = None, meta: dict | None = None, progress: bool = True,
        log: Callable[[str], None] = tqdm.write, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train, validate every epoch, write out_dir/last.pt (every epoch and on stop) and out_dir/best.pt
    (best val BLEU-4). Returns a summary: best score/epoch, history, whether it was stopped.
    Stops cleanly (saving a resumable last.pt) on SIGINT/SIGTERM or when `should_stop()` turns true."""
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    run = {"epoch": 0, "best_score": [-math.inf, -math.inf], "best_epoch": -1, "bad_epochs": 0, "history": [],
           "best_scores": {}}
    stats = EpochStats()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer_state"])
        if scheduler is not None and resume.get("scheduler_state"):
            scheduler.load_state_dict(resume["scheduler_state"])
        run.update({k: resume[k] for k in run if k in resume})
        stats = EpochStats(resume.get("epoch_loss_sum", 0.0), resume.get("epoch_tokens", 0), resume.get("batch", 0))
        _set_rng_state(resume["rng"])

    with stop_requests() as signalled:
        stop = (lambda: signalled() or should_stop()) if should_stop else signalled
        cached = model.encoder.frozen and cfg.cache_features
        paths = [it.image for it in train_set.items]
        if cached:
            load = _Features(encode_images(model, paths, device, cfg.batch_size, cfg.num_workers, cache_dir,
                                           progress, stop))
        else:
            load = _Images(paths, build_transform(model.transform_spec, train=True))
        pairs = CaptionPairs(train_set.items, vocab, load, cfg.max_len)
        val_feats = None

        def save(name: str, epoch: int, with_training_state: bool) -> None:
            payload = model_payload(model, vocab)
            payload.update(train_config=cfg.to_dict(), data=meta or {}, scores=run["best_scores"],
                           history=run["history"], epoch=epoch, best_score=run["best_score"],
                           best_epoch=run["best_epoch"], bad_epochs=run["bad_epochs"])
            if with_training_state:
                payload.update(optimizer_state=optimizer.state_dict(), rng=_rng_state(), batch=stats.batches,
                               epoch_loss_sum=stats.loss_sum, epoch_tokens=stats.tokens,
                               scheduler_state=scheduler.state_dict() if scheduler is not None else None)
            save_checkpoint(os.path.join(out_dir, name), payload)

        for epoch in range(run["epoch"], cfg.epochs):
            t0 = time.time()
            sampling = cfg.scheduled_sampling * epoch / max(1, cfg.epochs - 1)  # linear ramp from 0
            sampler = EpochSampler(len(pairs), cfg.seed, epoch, start=stats.batches * cfg.batch_size)
            # A private generator: DataLoader draws worker seeds from it, not from the global RNG, whose
            # state is saved for exact resume (a resumed epoch creates one iterator more than a straight run).
            loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_pairs,
                                num_workers=0 if cached else cfg.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            stats = train_one_epoch(model, loader, optimizer, device, cfg, cached=cached, sampling_prob=sampling,
                                    stats=stats, should_stop=stop,
                                    desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress)
            if stats.stopped:
                save("last.pt", epoch, True)
                log(f"stopped in epoch {epoch + 1} after {stats.batches} batches; resume with --resume "
                    f"{os.path.join(out_dir, 'last.pt')}")
                return {**run, "stopped": True}
            record = {"epoch": epoch + 1, "train_loss": round(stats.loss, 4)}
            if val_set is not None:
                if val_feats is None or not model.encoder.frozen:
                    val_feats = encode_images(model, [it.image for it in val_set.items], device, cfg.batch_size,
                                              cfg.num_workers, cache_dir if cached else None,
                                              progress, stop)
                record.update({k: round(v, 4) for k, v in
                               validate(model, val_set, val_feats, vocab, device, cfg, progress).items()})
            # Model selection: val BLEU-4 of generated captions, ties broken by val loss; without val data,
            # the lowest training loss.
            score = [record["BLEU-4"], -record["val_loss"]] if val_set is not None else [-stats.loss, 0.0]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(record.get("val_loss", stats.loss))  # smoother than BLEU on small val sets
            elif scheduler is not None:
                scheduler.step()
            record.update(lr=optimizer.param_groups[0]["lr"], seconds=round(time.time() - t0, 1))
            run["history"].append(record)
            improved = score > run["best_score"]
            if improved:
                run.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0,
                           best_scores={k: v for k, v in record.items() if k.startswith(("BLEU", "val_"))})
            else:
                run["bad_epochs"] += 1
            stats = EpochStats()
            run["epoch"] = epoch + 1
            save("last.pt", epoch + 1, True)
            if improved:
                save("best.pt", epoch + 1, False)
            log(" ".join(f"{k}={v}" for k, v in record.items()) + ("  * best" if improved else ""))
            if cfg.patience and run["bad_epochs"] >= cfg.patience:
                log(f"early stop: val BLEU-4 has not improved for {cfg.patience} epochs "
                    f"(best {run['best_score'][0]:.4f} at epoch {run['best_epoch']})")
                break
    return {**run, "stopped": False}
