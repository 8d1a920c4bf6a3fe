"""Training: teacher forcing with masked cross-entropy, backpropagation through the whole caption, gradient
clipping, per-epoch validation by BLEU-4 of *generated* (greedy) captions, early stopping, exact resume.
With objective "cider", the epochs are self-critical sequence training instead (scst.py).

Shapes: B batch, T caption steps, V vocab, P positions, E feature.

Resume is exact, also from the middle of an epoch: each epoch's example order is a permutation drawn from
(seed, epoch) alone, so a run stopped after n batches restarts at batch n of the same order, with the
model, optimizer, scheduler and RNG state saved at that moment.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import model_payload, save_checkpoint
from .config import DecodeConfig, TrainConfig
from .datasets import CaptionPairs, CaptionSet, collate_pairs, shows_person, training_weights
from .decoding import decode
from .errors import ConfigError
from .features import encode_images
from .media import WorkerLoader, build_transform, load_media_tensor, media_to
from .metrics import caption_metrics
from .model import CaptionModel
from .scst import scst_epoch, training_scorer
from .steps import EpochStats, optimisation_step
from .stopping import stop_requests
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


def teacher_forced_loss(model: torch.nn.Module, inputs, captions: torch.Tensor, *, encoded: bool = True,
                        sampling_prob: float = 0.0, hide_prob: float = 0.0, label_smoothing: float = 0.0,
                        alpha_c: float = 0.0, person: PersonTargets | None = None,
                        index: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Teacher forcing on captions (B,T+1) (BOS w1 .. EOS PAD..) -> (masked mean loss, target tokens).
    A copy model may adjust the targets (words it cannot produce become UNK, see copying.py). A model with a
    person detector adds its balanced binary cross-entropy on the items `index` (B,) of `person`."""
    targets = captions[:, 1:]  # (B,T)
    out = model(inputs, captions[:, :-1], sampling_prob, encoded=encoded, targets=targets, hide_prob=hide_prob)
    if out.targets is not None:
        targets = out.targets
    loss = caption_loss(out.logits, targets, out.alphas, label_smoothing=label_smoothing, alpha_c=alpha_c)
    if out.person_logit is not None and person is not None and index is not None:
        loss = loss + person.loss(out.person_logit, index)
    return loss, int((targets != 0).sum())


class PersonTargets:
    """Per training image, whether it shows a person (datasets.shows_person), and the detector's loss:
    binary cross-entropy with the positives weighted by (1 - s) / s, s the share of person photos among the
    draws, so both classes count alike and the detector has no prior for either (a photo unlike any training
    photo is not "a person" by default, as it is for the caption decoder)."""

    def __init__(self, labels: torch.Tensor, weights: torch.Tensor):
        self.labels = labels.float()  # (N_img,)
        share = float((weights * self.labels.double()).sum() / weights.sum())
        self.pos_weight = torch.tensor((1 - share) / max(share, 1e-6))

    def loss(self, logit: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        target = self.labels.to(logit.device)[index.to(logit.device)]
        return F.binary_cross_entropy_with_logits(logit, target, pos_weight=self.pos_weight.to(logit.device))


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


class _Features:
    def __init__(self, feats: torch.Tensor):
        self.feats = feats

    def __call__(self, i: int) -> torch.Tensor:
        return self.feats[i]


class _Media:
    def __init__(self, paths: list[str], transform, num_frames: int):
        self.paths, self.transform, self.num_frames = paths, transform, num_frames

    def __call__(self, i: int) -> torch.Tensor:
        return load_media_tensor(self.paths[i], self.transform, self.num_frames)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, cfg: TrainConfig, *, cached: bool, sampling_prob: float = 0.0,
                    stats: EpochStats | None = None, should_stop: Callable[[], bool] = lambda: False,
                    desc: str = "train", progress: bool = True, person: PersonTargets | None = None) -> EpochStats:
    """One pass of teacher forcing + BPTT over whole captions. `model` is a CaptionModel or its
    DistributedDataParallel wrapper; `cached` says whether the loader yields features or images.
    Stops early (stats.stopped) when `should_stop()` turns true."""
    stats = stats or EpochStats()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=len(loader.sampler), desc=desc, unit="cap", disable=not progress, leave=False,
               dynamic_ncols=True)
    for inputs, captions, index in loader:
        inputs, captions = media_to(inputs, device), captions.to(device)  # captions (B,T+1): BOS w1 .. EOS PAD..
        loss, n_tok = teacher_forced_loss(model, inputs, captions, encoded=cached, sampling_prob=sampling_prob,
                                          hide_prob=cfg.copy_hide, label_smoothing=cfg.label_smoothing,
                                          alpha_c=cfg.alpha_c, person=person, index=index)
        stats.add(loss, n_tok, optimisation_step(loss, params, optimizer, cfg.grad_clip))
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
    """Teacher-forced loss on every val caption, and BLEU-1..4 / CIDEr-D / ROUGE-L of greedy *generated*
    captions (never teacher-forced) against all references of each image."""
    model.eval()
    pairs = CaptionPairs(val_set.items, vocab, _Features(val_feats), cfg.max_len)
    loss_sum, tokens = 0.0, 0
    for feats, captions, _ in DataLoader(pairs, batch_size=cfg.batch_size, collate_fn=collate_pairs,
                                         generator=torch.Generator()):  # leaves the global RNG alone
        loss, n_tok = teacher_forced_loss(model, feats.to(device).float(), captions.to(device))
        loss_sum += float(loss) * n_tok
        tokens += n_tok
    hyps = generate_captions(model, val_feats, vocab, device, DecodeConfig(method="greedy", max_len=cfg.max_len),
                             cfg.batch_size, progress)
    scores = caption_metrics([it.captions for it in val_set.items], hyps, meteor=False)
    scores.pop("METEOR")  # Java start-up each epoch is not worth it; `captioner evaluate` reports it
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


def _gather(obj, world: int) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank."""
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not running under torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks_agree(local: Callable[[], bool], world: int) -> Callable[[], bool]:
    """A stop request on any rank stops every rank at the same batch (DDP ranks must run in lockstep)."""
    return local if world == 1 else (lambda: _any_rank(local()))


def _any_rank(flag: bool) -> bool:
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _sum_over_ranks(stats: EpochStats, world: int) -> EpochStats:
    if world == 1:
        return stats
    t = torch.tensor([stats.loss_sum, float(stats.tokens), stats.grad_norm_sum, stats.reward_sum,
                      float(stats.samples)], dtype=torch.float64)
    dist.all_reduce(t)
    return EpochStats(float(t[0]), int(t[1]), stats.batches, float(t[2]) / world, float(t[3]), int(t[4]),
                      stats.stopped)


class _RunLog:
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


def fit(model: CaptionModel, vocab: Vocabulary, train_set: CaptionSet, val_set: CaptionSet | None,
        cfg: TrainConfig, out_dir: str, device: torch.device, *, resume: dict | None = None,
        cache_dir: str | None = None, meta: dict | None = None, progress: bool = True,
        log: Callable[[str], None] = tqdm.write, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train, validate every epoch, write out_dir/last.pt (every epoch and on stop) and out_dir/best.pt
    (best val BLEU-4), plus metrics.jsonl / TensorBoard curves. Returns a summary: best score/epoch, history,
    whether it was stopped. Stops cleanly (saving a resumable last.pt) on SIGINT/SIGTERM or when
    `should_stop()` turns true.

    Under torchrun (torch.distributed initialised) the decoder trains with DistributedDataParallel: each rank
    takes its share of every epoch; rank 0 alone validates, logs and writes checkpoints, and broadcasts the
    validation result so every rank takes the same scheduler / early-stopping decisions.
    """
    rank, world = dist_info()
    main_rank = rank == 0
    progress = progress and main_rank
    if not main_rank:
        log = lambda msg: None  # noqa: E731
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed + rank)  # different dropout masks per rank
    random.seed(cfg.seed + rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    run = {"epoch": 0, "best_score": [-math.inf, -math.inf], "best_epoch": -1, "bad_epochs": 0, "history": [],
           "best_scores": {}}
    stats = EpochStats()
    epoch_done = resumed_batches = 0  # the current epoch's examples (all ranks) and batches before this run
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer_state"])
        if scheduler is not None and resume.get("scheduler_state"):
            scheduler.load_state_dict(resume["scheduler_state"])
        run.update({k: resume[k] for k in run if k in resume})
        stats = EpochStats(resume.get("epoch_loss_sum", 0.0), resume.get("epoch_tokens", 0), resume.get("batch", 0),
                           resume.get("epoch_grad_norm_sum", 0.0), resume.get("epoch_reward_sum", 0.0),
                           resume.get("epoch_samples", 0))
        # where the interrupted epoch stood, in examples of its whole order (EpochSampler); files from before
        # `epoch_done` have the batches of one process
        epoch_done = resume.get("epoch_done", resume.get("batch", 0) * resume["train_config"]["batch_size"])
        resumed_batches = stats.batches
        ranks = resume.get("rng_ranks") or []
        _set_rng_state(ranks[rank] if len(ranks) == world else resume["rng"])
        if len(ranks) != world and rank:  # another world size than the saved run: distinct streams at least
            torch.manual_seed(cfg.seed + rank + 100_003 * run["epoch"])
    trained = model
    if world > 1:
        # A copy model's copy embedding is unused in a batch whose captions copy nothing: DDP must look for
        # unused parameters there. A frozen encoder's buffers never change: no need to re-broadcast them.
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(model.cfg.copy_nouns), broadcast_buffers=not model.encoder.frozen)
    runlog = _RunLog(out_dir, main_rank)

    with stop_requests() as signalled:
        local_stop = (lambda: signalled() or should_stop()) if should_stop else signalled
        stop = _all_ranks_agree(local_stop, world)
        cached = model.encoder.frozen and cfg.cache_features
        paths = [it.image for it in train_set.items]
        if cached:
            feats = None
            for turn in ((0,) if world == 1 else (0, 1)):  # rank 0 fills the cache, then the others read it
                stopped = False
                if (rank == 0) == (turn == 0):
                    try:
                        feats = encode_images(model, paths, device, cfg.batch_size, cfg.num_workers, cache_dir,
                                              progress, local_stop)
                    except KeyboardInterrupt:
                        if world == 1:
                            raise
                        stopped = True
                # instead of a barrier: the ranks waiting for this turn learn that it was stopped, and stop too
                if world > 1 and _any_rank(stopped):
                    raise KeyboardInterrupt
            load = _Features(feats)
        else:
            load = _Media(paths, build_transform(model.transform_spec, train=True), model.cfg.num_frames)
        pairs = CaptionPairs(train_set.items, vocab, load, cfg.max_len)
        image_weights = training_weights(train_set.items, cfg.person_share)  # (N_img,)
        person = (PersonTargets(torch.tensor([shows_person(it) for it in train_set.items]), image_weights)
                  if model.cfg.person_gate else None)
        scst = cfg.objective == "cider"
        if scst:
            if not cached:
                raise ConfigError("--objective cider trains on cached features: it needs a frozen encoder "
                                  "and the feature cache (drop --no-cache / --fine-tune-encoder)")
            scorer = training_scorer([it.captions for it in train_set.items])
        val_feats = None

        def save(name: str, epoch: int, with_training_state: bool) -> None:
            """Every rank calls it (the RNG states are gathered); rank 0 writes."""
            rngs = _gather(_rng_state(), world) if with_training_state else []
            if not main_rank:
                return
            payload = model_payload(model, vocab)
            payload.update(train_config=cfg.to_dict(), data=meta or {}, scores=run["best_scores"],
                           history=run["history"], epoch=epoch, best_score=run["best_score"],
                           best_epoch=run["best_epoch"], bad_epochs=run["bad_epochs"])
            if with_training_state:
                # rng: rank 0's (what a single process resumes); rng_ranks: each rank's own dropout stream
                payload.update(optimizer_state=optimizer.state_dict(), rng=rngs[0], rng_ranks=rngs,
                               batch=stats.batches,
                               epoch_done=epoch_done + (stats.batches - resumed_batches) * cfg.batch_size * world,
                               epoch_loss_sum=stats.loss_sum, epoch_tokens=stats.tokens,
                               epoch_grad_norm_sum=stats.grad_norm_sum, epoch_reward_sum=stats.reward_sum,
                               epoch_samples=stats.samples,
                               scheduler_state=scheduler.state_dict() if scheduler is not None else None)
            save_checkpoint(os.path.join(out_dir, name), payload)

        for epoch in range(run["epoch"], cfg.epochs):
            t0 = time.time()
            sampling = cfg.scheduled_sampling * epoch / max(1, cfg.epochs - 1)  # linear ramp from 0
            desc = f"epoch {epoch + 1}/{cfg.epochs}"
            # Cross-entropy goes over (image, caption) pairs; SCST over images, each sampled scst_samples times.
            sampler = EpochSampler(len(train_set.items) if scst else len(pairs), cfg.seed, epoch,
                                   epoch_done, rank, world,
                                   weights=image_weights if scst else image_weights[pairs.image_index])
            # A private generator: DataLoader draws worker seeds from it, not from the global RNG, whose
            # state is saved for exact resume (a resumed epoch creates one iterator more than a straight run).
            loader = WorkerLoader(range(len(train_set.items)) if scst else pairs, batch_size=cfg.batch_size,
                                  sampler=sampler, collate_fn=None if scst else collate_pairs,
                                  num_workers=0 if cached else cfg.num_workers, pin_memory=device.type == "cuda",
                                  generator=torch.Generator().manual_seed(cfg.seed + epoch))
            if scst:
                stats = scst_epoch(trained, model.decoder, feats, scorer, vocab, loader, optimizer, device, cfg,
                                   stats, should_stop=stop, desc=desc, progress=progress)
            else:
                stats = train_one_epoch(trained, loader, optimizer, device, cfg, cached=cached,
                                        sampling_prob=sampling, stats=stats, should_stop=stop, desc=desc,
                                        progress=progress, person=person)
            if stats.stopped:
                save("last.pt", epoch, True)
                log(f"stopped in epoch {epoch + 1} after {stats.batches} batches; resume with --resume "
                    f"{os.path.join(out_dir, 'last.pt')}")
                runlog.close()
                return {**run, "stopped": True}
            total = _sum_over_ranks(stats, world)
            if scst:  # the policy-gradient loss is not a cross-entropy: it gets its own name
                record = {"epoch": epoch + 1, "policy_loss": round(total.loss, 4),
                          "train_cider": round(total.reward, 4)}  # mean CIDEr-D of the sampled captions
            else:
                record = {"epoch": epoch + 1, "train_loss": round(total.loss, 4)}
            record["grad_norm"] = round(total.grad_norm, 4)
            if val_set is not None:
                if main_rank:
                    if val_feats is None or not model.encoder.frozen:
                        val_feats = encode_images(model, [it.image for it in val_set.items], device,
                                                  cfg.batch_size, cfg.num_workers, cache_dir if cached else None,
                                                  progress, local_stop)
                    record.update({k: round(v, 4) for k, v in
                                   validate(model, val_set, val_feats, vocab, device, cfg, progress).items()})
                if world > 1:
                    box = [record]
                    dist.broadcast_object_list(box, src=0)
                    record = box[0]
            # Model selection: val BLEU-4 of generated captions, ties broken by val loss; without val data,
            # the lowest training loss (SCST: the highest CIDEr-D of its samples).
            if val_set is not None:
                score = [record["BLEU-4"], -record["val_loss"]]
            else:
                score = [total.reward, 0.0] if scst else [-total.loss, 0.0]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                # Val loss is smoother than BLEU on small val sets; SCST trades cross-entropy for CIDEr-D, so
                # it follows what it maximises.
                scheduler.step(-record.get("CIDEr-D", total.reward) if scst else record.get("val_loss", total.loss))
            elif scheduler is not None:
                scheduler.step()
            record.update(lr=optimizer.param_groups[0]["lr"], seconds=round(time.time() - t0, 1))
            run["history"].append(record)
            improved = score > run["best_score"]
            if improved:
                run.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0,
                           best_scores={k: v for k, v in record.items() if k not in ("epoch", "lr", "seconds")})
            else:
                run["bad_epochs"] += 1
            stats = EpochStats()
            epoch_done = resumed_batches = 0
            run["epoch"] = epoch + 1
            save("last.pt", epoch + 1, True)
            if improved:
                save("best.pt", epoch + 1, False)
            runlog.write(record)
            if world > 1:
                dist.barrier()  # nobody runs ahead while rank 0 writes
            log(" ".join(f"{k}={v}" for k, v in record.items()) + ("  * best" if improved else ""))
            if cfg.patience and run["bad_epochs"] >= cfg.patience:
                log(f"early stop: val BLEU-4 has not improved for {cfg.patience} epochs "
                    f"(best {run['best_score'][0]:.4f} at epoch {run['best_epoch']})")
                break
    runlog.close()
    return {**run, "stopped": False}
