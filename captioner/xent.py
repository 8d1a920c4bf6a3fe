"""The cross-entropy objective: teacher forcing with masked cross-entropy over whole captions,
backpropagation through time through every step, gradient clipping (steps.py); a person detector trained
beside the caption when the model has one.

Shapes: B batch, T caption steps, V vocab, P positions, E feature.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainConfig
from .datasets import CaptionPairs, Item, collate_pairs, shows_person
from .media import media_to
from .sampler import epoch_loader
from .steps import EpochStats, optimisation_step, selection_key
from .vocab import Vocabulary


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor | None = None, *,
                 pad_id: int = 0, label_smoothing: float = 0.0, alpha_c: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the real (non-PAD) target tokens, plus the doubly stochastic attention
    penalty alpha_c * mean_P (1 - sum_t alpha_t)^2 of Show, Attend and Tell.
    logits (B,T,V) with targets (B,T), or packed (N,V) with (N,) (decoder.DecoderOutput); alphas (B,T,P) or
    None."""
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
    targets = captions[:, 1:]  # (B,T); what comes back may be packed (N,)
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


class CrossEntropy:
    """Teacher forcing over (image, caption) pairs, drawn by their image's weight. `load(i)` gives image i's
    features (cached) or its preprocessed pixels."""

    def __init__(self, model: torch.nn.Module, vocab: Vocabulary, items: list[Item],
                 load: Callable[[int], torch.Tensor], image_weights: torch.Tensor, cfg: TrainConfig, cached: bool):
        self.pairs = CaptionPairs(items, vocab, load, cfg.max_len)
        self.weights = image_weights[self.pairs.image_index]  # (N_pairs,)
        self.person = (PersonTargets(torch.tensor([shows_person(it) for it in items]), image_weights)
                       if model.cfg.person_gate else None)
        self.cfg, self.cached = cfg, cached

    def loader(self, epoch: int, done: int, rank: int, world: int, device: torch.device) -> DataLoader:
        return epoch_loader(self.pairs, len(self.pairs), self.weights, batch_size=self.cfg.batch_size,
                            seed=self.cfg.seed, epoch=epoch, done=done, rank=rank, world=world, device=device,
                            num_workers=0 if self.cached else self.cfg.num_workers, collate_fn=collate_pairs)

    def run_epoch(self, model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                  device: torch.device, stats: EpochStats, epoch: int, **options) -> EpochStats:
        sampling = self.cfg.scheduled_sampling * epoch / max(1, self.cfg.epochs - 1)  # linear ramp from 0
        return train_one_epoch(model, loader, optimizer, device, self.cfg, cached=self.cached,
                               sampling_prob=sampling, stats=stats, person=self.person, **options)

    def record(self, total: EpochStats) -> dict[str, float]:
        return {"train_loss": round(total.loss, 4)}

    def selection_score(self, record: dict, total: EpochStats) -> list[float]:
        """steps.selection_key; without val data, the lowest training loss."""
        return selection_key(record, [-total.loss, 0.0])

    def plateau_value(self, record: dict, total: EpochStats) -> float:
        """What a plateau scheduler minimises: the val loss (smoother than BLEU on small val sets)."""
        return record.get("val_loss", total.loss)
