"""Self-critical sequence training (SCST; Rennie et al., 2017, "Self-critical Sequence Training for Image
Captioning"): after cross-entropy training, fine-tune the decoder to maximise the CIDEr-D of captions it
*generates itself*, which removes the exposure bias of teacher forcing and optimises what is evaluated.

Policy gradient (REINFORCE) with a baseline: for each image, K captions w^k are sampled from the model; each
gets reward r_k = CIDEr-D(w^k, the image's references) and baseline b_k = the mean reward of the other K-1
samples (Luo, 2020, "A Better Variant of Self-Critical Sequence Training": no extra greedy decode, and
unbiased). The loss is -sum_k (r_k - b_k) * log p(w^k), summed over each caption's words (its EOS included)
and divided by the number of words. CIDEr-D's document frequencies come from the training references.

The reward may add two terms beside CIDEr-D (TrainConfig.scst_grounding / scst_repetition): credit for naming
what the CNN sees, sum over the image's candidate nouns named of (p_k - 0.5), so naming a noun the CNN is sure
of pays and naming one it doubts costs (copy models); and a penalty for each content word said again, because
CIDEr-D alone rewards repeating a rewarded noun ("a cat laying on top of a cat"): blocking it in the reward
teaches the policy not to, where a decoding ban only hides it.

Dropout is off during SCST (the model is in eval mode), so the captions are sampled from exactly the policy
whose log-probabilities are differentiated.

Shapes: B images, K samples per image, N = B*K rows, T caption steps, V vocabulary, P positions, E feature.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import DecodeConfig, TrainConfig
from .decoding import REQUIRE_PROB, decode
from .grounding import repeated_content_words
from .metrics import CiderD
from .sampler import epoch_loader
from .steps import EpochStats, optimisation_step, selection_key
from .vocab import Vocabulary, tokenize


def training_scorer(references: list[list[str]]) -> CiderD:
    """CIDEr-D against the training references (references[i]: image i's captions as text)."""
    return CiderD([[tokenize(r) for r in refs] for refs in references])


@torch.no_grad()
def sample_captions(decoder, feats: torch.Tensor, vocab: Vocabulary, k: int, max_len: int) -> list[list[int]]:
    """K captions per image sampled from the model (temperature 1, nothing filtered, UNK allowed: SCST learns
    to avoid it). feats (B,P,E) -> N = B*K word-id lists, image-major, each ending in EOS if it ended."""
    cfg = DecodeConfig(method="sample", num_captions=k, max_len=max_len, min_len=0, length_penalty=0.0,
                       suppress_unk=False, no_bad_endings=False,
                       no_article_after_collective=False)
    hyps = decode(decoder, feats, vocab, cfg)
    return [h.tokens + ([vocab.eos_id] if h.finished else []) for per_image in hyps for h in per_image]


def grounding_credit(decoder, feats: torch.Tensor, rows: list[list[int]], k: int) -> torch.Tensor:
    """Per sampled caption (N = B*K, image-major), sum over the image's candidate nouns it names of
    (p - REQUIRE_PROB): what the CNN is sure of pays, what it doubts costs. Zeros for a model without
    candidates (not a copy model)."""
    if decoder.copy is None:
        return torch.zeros(len(rows))
    state = decoder.copy.init_state(feats, feats.mean(1), {})  # cand_ids (B,K'), cand_logp (B,K')
    ids, probs = state["cand_ids"].tolist(), state["cand_logp"].exp().tolist()
    credit = []
    for r, words in enumerate(rows):
        image = r // k
        said = set(words)
        credit.append(sum(p - REQUIRE_PROB for w, p in zip(ids[image], probs[image]) if w in said))
    return torch.tensor(credit)


def self_critical_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (B,K) -> r_k minus the mean of the other K-1 rewards of the same image (B,K)."""
    k = rewards.size(1)
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def policy_loss(logits: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                pad_id: int = Vocabulary.pad_id) -> torch.Tensor:
    """-sum (advantage of its caption) * log p(word) over the real words, / their number.
    logits (N,T,V), targets (N,T) (PAD after each caption), advantages (N,)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)  # (N,T)
    mask = (targets != pad_id).to(logp.dtype)
    return -(advantages.unsqueeze(1) * logp * mask).sum() / mask.sum().clamp(min=1.0)


def scst_epoch(model: torch.nn.Module, decoder, feats: torch.Tensor, scorer: CiderD, vocab: Vocabulary,
               loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device, cfg: TrainConfig,
               stats: EpochStats, *, should_stop: Callable[[], bool] = lambda: False, desc: str = "scst",
               progress: bool = True):
    """One pass of SCST over the images the loader yields (batches of image indices into feats (N_img,P,E)).
    `model` is the CaptionModel or its DistributedDataParallel wrapper (its forward computes the gradients),
    `decoder` the plain decoder that samples. `stats` collects the loss and the mean
    sampled CIDEr-D (`reward_sum`)."""
    model.eval()  # dropout off: sample and differentiate the same policy
    params = [p for p in model.parameters() if p.requires_grad]
    k = cfg.scst_samples
    bar = tqdm(total=len(loader.sampler), desc=desc, unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    for index in loader:  # (B,) image indices
        x = feats[index].to(device).float()  # (B,P,E)
        rows = sample_captions(decoder, x, vocab, k, cfg.max_len)  # N = B*K
        image_of_row = index.repeat_interleave(k).tolist()
        words = [[vocab.itos[w] for w in ids if w != vocab.eos_id] for ids in rows]
        rewards = torch.tensor([scorer.score(i, ws) for i, ws in zip(image_of_row, words)])  # (N,)
        cider = rewards.view(-1, k)
        if cfg.scst_grounding:
            rewards = rewards + cfg.scst_grounding * grounding_credit(decoder, x, rows, k)
        if cfg.scst_repetition:
            rewards = rewards - cfg.scst_repetition * torch.tensor([float(repeated_content_words(ws))
                                                                    for ws in words])
        rewards = rewards.view(-1, k)  # (B,K)
        advantages = self_critical_advantages(rewards).view(-1).to(device)  # (N,)
        captions = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor([vocab.bos_id, *ids], dtype=torch.long) for ids in rows], batch_first=True,
            padding_value=vocab.pad_id).to(device)  # (N,T+1): BOS w1 .. [EOS] PAD..
        out = model(x.repeat_interleave(k, dim=0), captions[:, :-1])  # logits (N,T,V)
        loss = policy_loss(out.logits, captions[:, 1:], advantages)
        n_tok = int((captions[:, 1:] != vocab.pad_id).sum())
        stats.add(loss, n_tok, optimisation_step(loss, params, optimizer, cfg.grad_clip))
        stats.reward_sum += float(cider.sum())  # the CIDEr-D part alone: comparable across reward settings
        stats.samples += cider.numel()
        bar.update(len(index))
        bar.set_postfix(cider=f"{stats.reward:.3f}")
        if should_stop():
            stats.stopped = True
            break
    bar.close()
    return stats


class SelfCritical:
    """SCST over the training images (each sampled scst_samples times per visit), drawn by their weight; needs
    the images' cached features feats (N_img,P,E)."""

    def __init__(self, decoder, vocab: Vocabulary, items: list, feats: torch.Tensor, image_weights: torch.Tensor,
                 cfg: TrainConfig):
        self.decoder, self.vocab, self.feats, self.weights, self.cfg = decoder, vocab, feats, image_weights, cfg
        self.scorer = training_scorer([it.captions for it in items])

    def loader(self, epoch: int, done: int, rank: int, world: int, device: torch.device) -> DataLoader:
        return epoch_loader(range(len(self.feats)), len(self.feats), self.weights, batch_size=self.cfg.batch_size,
                            seed=self.cfg.seed, epoch=epoch, done=done, rank=rank, world=world, device=device,
                            num_workers=0)

    def run_epoch(self, model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                  device: torch.device, stats: EpochStats, epoch: int, **options) -> EpochStats:
        return scst_epoch(model, self.decoder, self.feats, self.scorer, self.vocab, loader, optimizer, device,
                          self.cfg, stats, **options)

    def record(self, total: EpochStats) -> dict[str, float]:
        # the policy-gradient loss is not a cross-entropy: it gets its own name; train_cider is the mean
        # CIDEr-D of the sampled captions
        return {"policy_loss": round(total.loss, 4), "train_cider": round(total.reward, 4)}

    def selection_score(self, record: dict, total: EpochStats) -> list[float]:
        """steps.selection_key; without val data, the highest CIDEr-D of the samples."""
        return selection_key(record, [total.reward, 0.0])

    def plateau_value(self, record: dict, total: EpochStats) -> float:
        """A plateau scheduler follows what SCST maximises (it trades cross-entropy for CIDEr-D)."""
        return -record.get("CIDEr-D", total.reward)
