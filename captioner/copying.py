"""Copying what the CNN sees into the caption: novel object captioning with a pointer over candidate nouns.

Follows LSTM-C (Yao et al., CVPR 2017) and the pointer-generator mixture (See et al., ACL 2017): at each step
the next-word distribution mixes generating from the caption vocabulary and copying one of the image's
candidate nouns (nouns.py: the CNN's ImageNet classes as everyday words),

    P(y) = g * P_vocab(y) + (1 - g) * P_copy(y),
    P_copy = softmax_k( v_k . W h_t + log p_k ),    g = sigmoid(w . [h_t; x_t; image]),

where v_k is candidate k's visual embedding (the mean of its classes' classifier weight rows) and p_k its
probability. The vocabulary is the caption words plus every table noun; nouns never seen in a training
caption (ids >= gen_size) can only be copied, and when fed back as the next input they are embedded by a
learned projection of their visual embedding, so an unseen word still has a vector.

The CNN's classifier and the noun table travel inside the checkpoint (as this module's buffers), so a copy
model captions exactly as it was trained even if the shipped table changes later.

With `concepts`, the candidates are also an input of every decoder step (LSTM-A, see CopyHead.__init__).

Shapes: B batch, T steps, V vocab (caption words + nouns), Vg generated words, K candidates, N nouns,
C classes, E feature, Ev classifier feature, H hidden, D embedding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .nouns import strongest_classes

if TYPE_CHECKING:
    from .nouns import NounSpace

State = dict[str, torch.Tensor]
IMPOSSIBLE = -1e4  # log-probability of a word neither path can produce (exp() is 0 in float32)


class CopyHead(nn.Module):
    nouns: NounSpace  # the noun table its membership was built from (model._copy_head sets it)

    def __init__(self, vocab_size: int, gen_size: int, hidden_dim: int, embed_dim: int, feature_dim: int,
                 k: int, classifier_weight: torch.Tensor, classifier_bias: torch.Tensor,
                 membership: torch.Tensor, noun_ids: torch.Tensor, video: bool, concepts: bool = False,
                 top_classes: int = 0):
        super().__init__()
        self.vocab_size, self.gen_size, self.k, self.video = vocab_size, gen_size, k, video
        self.top_classes = top_classes  # a noun's probability counts only this many strongest classes; 0 = all
        Ev = classifier_weight.size(1)
        # The frozen ImageNet classifier and noun table (fp16 / uint8: 5 MB in a checkpoint, not 12).
        self.register_buffer("class_weight", classifier_weight.detach().half())  # (C,Ev)
        self.register_buffer("class_bias", classifier_bias.detach().half())  # (C,)
        self.register_buffer("membership", membership.detach().to(torch.uint8))  # (C,N)
        self.register_buffer("noun_ids", noun_ids.detach().long())  # (N,) vocabulary id of each noun
        m = membership.float()
        visual = (m.t() @ classifier_weight.float()) / m.sum(0).clamp(min=1.0).unsqueeze(1)  # (N,Ev)
        self.register_buffer("noun_visual", visual.half())
        noun_of = torch.full((vocab_size,), -1, dtype=torch.long)
        noun_of[noun_ids] = torch.arange(len(noun_ids))
        self.register_buffer("noun_of", noun_of)  # (V,) noun index of a vocabulary id, -1 if none
        self.copy_embed = nn.Linear(Ev, embed_dim)  # input embedding of copy-only words
        # the gate also reads how sure the CNN is of its best noun
        self.gate = nn.Linear(hidden_dim + embed_dim + feature_dim + 1, 1)
        # LSTM-A (Yao et al., ICCV 2017, "Boosting Image Captioning with Attributes"): what the CNN sees is also
        # an input of every step, sum_k p_k v_k projected to the embedding size. The candidates' probabilities
        # weight it, so a noun the CNN is unsure of barely moves the decoder; and it is built from the nouns'
        # visual embeddings, not from per-noun parameters, so a noun no training photo showed reaches the
        # decoder through the same projection as the ones it learned from.
        self.concept_proj = nn.Linear(Ev, embed_dim) if concepts else None

    # --- candidates -----------------------------------------------------------------------------------------
    def class_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Decoder features -> ImageNet class probabilities (B,C). Video models' (B,F,Ev) frames are classified
        one by one and averaged; an image's grid (B,P,Ev) is pooled first, as the classifier was trained."""
        w, b = self.class_weight.float(), self.class_bias.float()
        if self.video:
            return torch.softmax(features.float() @ w.t() + b, dim=-1).mean(1)  # (B,C)
        return torch.softmax(features.float().mean(1) @ w.t() + b, dim=-1)

    def init_state(self, features: torch.Tensor, summary: torch.Tensor, state: State) -> State:
        """Adds the image's K candidates: cand_ids (B,K) vocab ids and cand_logp (B,K)."""
        noun_p = strongest_classes(self.class_probs(features), self.top_classes) @ self.membership.float()  # (B,N)
        top_p, top_i = noun_p.topk(min(self.k, noun_p.size(1)), dim=1)  # (B,K)
        state["cand_ids"] = self.noun_ids[top_i]
        state["cand_logp"] = top_p.clamp(min=1e-8).log()
        state["image"] = summary  # (B,E) for the gate
        if self.concept_proj is not None:
            seen = (top_p.unsqueeze(-1) * self.noun_visual[top_i].float()).sum(1)  # (B,Ev)
            state["concept"] = self.concept_proj(seen)  # (B,D)
        return state

    # --- inputs -----------------------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings of copy-only words (ids >= gen_size) by the projection of their visual
        embedding: tokens (...), embedded (...,D)."""
        copy_only = tokens >= self.gen_size
        if not bool(copy_only.any()):
            return embedded
        noun = self.noun_of[tokens.clamp(max=self.vocab_size - 1)].clamp(min=0)  # (...)
        projected = self.copy_embed(self.noun_visual[noun].float())  # (...,D)
        return torch.where(copy_only.unsqueeze(-1), projected, embedded)

    # --- outputs ----------------------------------------------------------------------------------------------
    def mix(self, gen_logits: torch.Tensor, h: torch.Tensor, x: torch.Tensor, state: State,
            hide: torch.Tensor | None = None) -> torch.Tensor:
        """log P(y) over the whole vocabulary, for one step (B,...) or all steps (B,T,...).

        gen_logits (...,Vg), h (...,H) the top RNN output, x (...,D) the input embedding. `hide` (...) holds,
        per position, a word id whose generation path is closed (the copy path must produce it; training's
        simulation of novel words), or -1. Impossible words get IMPOSSIBLE, not -inf, so no gradient is NaN."""
        steps = gen_logits.dim() == 3
        image = torch.cat([state["image"], state["cand_logp"][:, :1]], dim=-1)  # (B,E+1)
        image = image.unsqueeze(1).expand(-1, h.size(1), -1) if steps else image
        z = self.gate(torch.cat([h, x, image], dim=-1))  # (...,1) gate logit: g = sigmoid(z)
        gen = F.pad(F.log_softmax(gen_logits, dim=-1), (0, self.vocab_size - self.gen_size), value=IMPOSSIBLE)
        if hide is not None:  # (...,V): the hidden word's generation path closed
            closed = F.one_hot(hide.clamp(min=0), self.vocab_size).bool() & (hide >= 0).unsqueeze(-1)
            gen = gen.masked_fill(closed, IMPOSSIBLE)
        cand_logp, cand_ids = state["cand_logp"], state["cand_ids"]  # (B,K)
        if steps:
            shape = (*h.shape[:2], cand_ids.size(1))  # (B,T,K)
            cand_logp, cand_ids = cand_logp.unsqueeze(1).expand(shape), cand_ids.unsqueeze(1).expand(shape)
        copy = F.log_softmax(cand_logp, dim=-1)  # (...,K)
        # log(g P_vocab + (1-g) P_copy), with P_copy zero but at the K candidates: elsewhere the copy term is
        # exp(IMPOSSIBLE) = 0 beside a generated word (logaddexp returns the generated term exactly), so the
        # mixture is computed at the candidates and at the copy-only words only, not over all V words per step.
        via_gen, via_copy = F.logsigmoid(z) + gen, F.logsigmoid(-z)  # (...,V), (...,1)
        G = self.gen_size
        out = torch.cat([via_gen[..., :G], torch.logaddexp(via_gen[..., G:], via_copy + IMPOSSIBLE)], dim=-1)
        at_cands = torch.logaddexp(via_gen.gather(-1, cand_ids), via_copy + copy)  # (...,K); candidates distinct
        return out.scatter(-1, cand_ids, at_cands)

    def trainable_targets(self, targets: torch.Tensor, state: State, unk_id: int) -> torch.Tensor:
        """Copy-only target words that are not among the image's candidates cannot be produced: they become
        UNK for the loss (as any unknown word). targets (B,T)."""
        copy_only = targets >= self.gen_size
        among = (targets.unsqueeze(-1) == state["cand_ids"].unsqueeze(1)).any(-1)  # (B,T)
        return torch.where(copy_only & ~among, torch.full_like(targets, unk_id), targets)

    def hide_mask(self, targets: torch.Tensor, state: State, prob: float) -> torch.Tensor:
        """Training: with probability `prob`, a target word that is both a candidate and in the generated
        vocabulary gets its generation path closed, so the gate learns to copy (novel-word simulation).
        -> (B,T) word ids to hide, or -1."""
        among = (targets.unsqueeze(-1) == state["cand_ids"].unsqueeze(1)).any(-1) & (targets < self.gen_size)
        draw = torch.rand(targets.shape, device=targets.device) < prob
        return torch.where(among & draw, targets, torch.full_like(targets, -1))
