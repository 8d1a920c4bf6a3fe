"""Training, the recipe: `fit` runs an objective for some epochs (cross-entropy with teacher forcing and
backpropagation through whole captions, xent.py; or self-critical sequence training, scst.py), validates
every epoch by BLEU-4 of *generated* (greedy) captions, keeps the best model, stops early, and resumes
exactly, also from the middle of an epoch. Under torchrun the decoder trains with DistributedDataParallel.

Where the parts are: the objectives' epochs in xent.py and scst.py (each has loader(), run_epoch(), record(),
and what model selection and the scheduler follow); the example order in sampler.py; the run's state, its
checkpoints and logs in run_state.py; the optimisation step in steps.py; collectives in distributed.py.

Shapes: N images, P positions, E feature.
"""
from __future__ import annotations

import os
import random
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .config import DecodeConfig, TrainConfig
from .datasets import CaptionPairs, CaptionSet, collate_pairs, training_weights
from .errors import ConfigError
from .features import encode_images
from .inference import Captioner
from .media import MediaDataset, build_transform
from .metrics import caption_metrics
from .model import CaptionModel
from .run_state import RunLog, RunState, restore_rng, save_run
from .sampler import EpochSampler  # noqa: F401 - re-exported: training's API
from .scst import SelfCritical
from .stopping import stop_requests
from .vocab import Vocabulary
from .xent import CrossEntropy, caption_loss, teacher_forced_loss, train_one_epoch  # noqa: F401 - re-exported


class _Features:
    def __init__(self, feats: torch.Tensor):
        self.feats = feats

    def __call__(self, i: int) -> torch.Tensor:
        return self.feats[i]


@torch.no_grad()
def validate(model: CaptionModel, val_set: CaptionSet, val_feats: torch.Tensor, vocab: Vocabulary,
             device: torch.device, cfg: TrainConfig, progress: bool = True) -> dict[str, float]:
    """Teacher-forced loss on every val caption, and BLEU-1..4 / CIDEr-D / ROUGE-L of greedy *generated*
    captions (never teacher-forced; through Captioner, the path every surface takes) against all references
    of each image. val_feats (N,P,E)."""
    model.eval()
    pairs = CaptionPairs(val_set.items, vocab, _Features(val_feats), cfg.max_len)
    loss_sum, tokens = 0.0, 0
    for feats, captions, _ in DataLoader(pairs, batch_size=cfg.batch_size, collate_fn=collate_pairs,
                                         generator=torch.Generator()):  # leaves the global RNG alone
        loss, n_tok = teacher_forced_loss(model, feats.to(device).float(), captions.to(device))
        loss_sum += float(loss) * n_tok
        tokens += n_tok
    # the model's own greedy captions: the decoding rules a shipped model adds (no bad endings, ...) are chosen
    # after training (scripts/ship_default.py), so they do not choose its epoch
    greedy = DecodeConfig(method="greedy", max_len=cfg.max_len, no_bad_endings=False,
                          no_article_after_collective=False)
    with tqdm(total=len(val_feats), desc="generating", disable=not progress, leave=False) as bar:
        hyps = Captioner(model, vocab, device, greedy, engine="torch").best_captions(val_feats, greedy,
                                                                                     cfg.batch_size, bar.update)
    scores = caption_metrics([it.captions for it in val_set.items], hyps, meteor=False)
    scores.pop("METEOR")  # Java start-up each epoch is not worth it; `captioner evaluate` reports it
    return {"val_loss": loss_sum / max(tokens, 1), **scores}


class Validation:
    """Each epoch's validation record (rank 0 alone computes it); the val features are encoded once when the
    encoder is frozen, again each epoch when it is fine-tuned."""

    def __init__(self, model: CaptionModel, vocab: Vocabulary, val_set: CaptionSet, device: torch.device,
                 cfg: TrainConfig, cache_dir: str | None, progress: bool, should_stop: Callable[[], bool]):
        self.model, self.vocab, self.val_set, self.device, self.cfg = model, vocab, val_set, device, cfg
        self.cache_dir, self.progress, self.should_stop = cache_dir, progress, should_stop
        self.feats: torch.Tensor | None = None  # (N,P,E)

    def __call__(self) -> dict[str, float]:
        if self.feats is None or not self.model.encoder.frozen:
            self.feats = encode_images(self.model, [it.image for it in self.val_set.items], self.device,
                                       self.cfg.batch_size, self.cfg.num_workers, self.cache_dir, self.progress,
                                       self.should_stop)
        scores = validate(self.model, self.val_set, self.feats, self.vocab, self.device, self.cfg, self.progress)
        return {k: round(v, 4) for k, v in scores.items()}


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


def step_scheduler(scheduler, value: float) -> None:
    """A plateau scheduler steps with `value` (halving the LR after 2 epochs without gain), others per epoch."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(value)
    elif scheduler is not None:
        scheduler.step()


def training_features(model: CaptionModel, paths: list[str], device: torch.device, cfg: TrainConfig,
                      cache_dir: str | None, progress: bool, should_stop: Callable[[], bool]) -> torch.Tensor:
    """Every training image's features (N,P,E), encoded once into the feature cache (features.py). Under
    torchrun rank 0 fills the cache, then the others read it; a stop while rank 0 encodes stops every rank
    (instead of a barrier, where the others would wait for ever)."""
    rank, world = distributed.shard()
    feats = None
    for turn in ((0,) if world == 1 else (0, 1)):
        stopped = False
        if (rank == 0) == (turn == 0):
            try:
                feats = encode_images(model, paths, device, cfg.batch_size, cfg.num_workers, cache_dir, progress,
                                      should_stop)
            except KeyboardInterrupt:
                if world == 1:
                    raise
                stopped = True
        if distributed.any_rank(stopped, world):
            raise KeyboardInterrupt
    return feats


def make_objective(model: CaptionModel, vocab: Vocabulary, train_set: CaptionSet, cfg: TrainConfig,
                   device: torch.device, cache_dir: str | None, progress: bool,
                   should_stop: Callable[[], bool]) -> CrossEntropy | SelfCritical:
    """The objective of cfg.objective over the training set, on cached features when the encoder is frozen."""
    cached = model.encoder.frozen and cfg.cache_features
    weights = training_weights(train_set.items, cfg.person_share)  # (N,)
    paths = [it.image for it in train_set.items]
    if cfg.objective == "cider":
        if not cached:
            raise ConfigError("--objective cider trains on cached features: it needs a frozen encoder "
                              "and the feature cache (drop --no-cache / --fine-tune-encoder)")
        feats = training_features(model, paths, device, cfg, cache_dir, progress, should_stop)
        return SelfCritical(model.decoder, vocab, train_set.items, feats, weights, cfg)
    if cached:
        load = _Features(training_features(model, paths, device, cfg, cache_dir, progress, should_stop))
    else:
        load = MediaDataset(build_transform(model.transform_spec, train=True), model.cfg.num_frames, paths).tensor
    return CrossEntropy(model, vocab, train_set.items, load, weights, cfg, cached)


def _resumed(ckpt: dict, optimizer: torch.optim.Optimizer, scheduler, seed: int) -> RunState:
    optimizer.load_state_dict(ckpt["optimizer_state"])
    if scheduler is not None and ckpt.get("scheduler_state"):
        scheduler.load_state_dict(ckpt["scheduler_state"])
    rank, world = distributed.shard()
    restore_rng(ckpt, rank, world, seed)
    return RunState.from_checkpoint(ckpt, world)


def fit(model: CaptionModel, vocab: Vocabulary, train_set: CaptionSet, val_set: CaptionSet | None,
        cfg: TrainConfig, out_dir: str, device: torch.device, *, resume: dict | None = None,
        cache_dir: str | None = None, meta: dict | None = None, progress: bool = True,
        log: Callable[[str], None] = tqdm.write, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train, validate every epoch, write out_dir/last.pt (every epoch and on stop) and out_dir/best.pt
    (best val BLEU-4, ties broken by val loss), plus metrics.jsonl / TensorBoard curves. Returns a summary:
    best score/epoch, history, whether it was stopped. Stops cleanly (saving a resumable last.pt) on
    SIGINT/SIGTERM or when `should_stop()` turns true.

    Under torchrun each rank takes its share of every epoch; rank 0 alone validates, logs and writes
    checkpoints, and shares the validation record, so every rank takes the same scheduler and early-stopping
    decisions.
    """
    rank, world = distributed.shard()
    if rank:
        progress, log = False, (lambda msg: None)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed + rank)  # different dropout masks per rank
    random.seed(cfg.seed + rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    run = RunState(world=world) if resume is None else _resumed(resume, optimizer, scheduler, cfg.seed)
    trained = distributed.data_parallel(model, device, world)
    runlog = RunLog(out_dir, rank == 0)

    def save(name: str, epoch: int, training_state: bool) -> None:
        save_run(os.path.join(out_dir, name), model, vocab, cfg, meta or {}, run, epoch,
                 **({"optimizer": optimizer, "scheduler": scheduler} if training_state else {}))

    with stop_requests() as signalled:
        local_stop = (lambda: signalled() or should_stop()) if should_stop else signalled
        stop = distributed.all_ranks_agree(local_stop, world)
        objective = make_objective(model, vocab, train_set, cfg, device, cache_dir, progress, local_stop)
        frozen_cache = cache_dir if model.encoder.frozen and cfg.cache_features else None
        validation = (Validation(model, vocab, val_set, device, cfg, frozen_cache, progress, local_stop)
                      if val_set is not None else None)
        for epoch in range(run.epoch, cfg.epochs):
            t0 = time.time()
            loader = objective.loader(epoch, run.epoch_done, rank, world, device)
            run.stats = objective.run_epoch(trained, loader, optimizer, device, run.stats, epoch, should_stop=stop,
                                            desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress)
            if run.stats.stopped:
                save("last.pt", epoch, True)
                distributed.barrier(world)  # no rank exits (torchrun would stop the others) before it is written
                log(f"stopped in epoch {epoch + 1} after {run.stats.batches} batches; resume with --resume "
                    f"{os.path.join(out_dir, 'last.pt')}")
                runlog.close()
                return run.summary(stopped=True)
            total = run.stats.summed(world)
            record = {"epoch": epoch + 1, **objective.record(total), "grad_norm": round(total.grad_norm, 4)}
            if validation is not None:
                record.update(distributed.from_rank_0(validation() if rank == 0 else None, world))
            score = objective.selection_score(record, total)
            step_scheduler(scheduler, objective.plateau_value(record, total))
            record.update(lr=optimizer.param_groups[0]["lr"], seconds=round(time.time() - t0, 1))
            improved = run.finish_epoch(record, score)
            save("last.pt", epoch + 1, True)
            if improved:
                save("best.pt", epoch + 1, False)
            runlog.write(record)
            distributed.barrier(world)  # nobody runs ahead while rank 0 writes
            log(" ".join(f"{k}={v}" for k, v in record.items()) + ("  * best" if improved else ""))
            if cfg.patience and run.bad_epochs >= cfg.patience:
                log(f"early stop: val BLEU-4 has not improved for {cfg.patience} epochs "
                    f"(best {run.best_score[0]:.4f} at epoch {run.best_epoch})")
                break
    runlog.close()
    return run.summary(stopped=False)
