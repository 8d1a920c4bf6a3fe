"""A fluent second decoder beside the grounded one, and the rule that picks between their captions.

The grounded decoder (a copy model with the concept input and the person detector, copying.py) names what
the CNN recognises, nouns no training caption has included, but its copied nouns replace COCO's words and its
captions score lower on COCO. A decoder trained on COCO alone (no copying; cross-entropy, then self-critical
training) writes the captions COCO rewards, but names only what COCO photos show ("a man holding a hot dog"
for a baboon). A model may carry both over its one encoder (checkpoint key "fluent"); each input's caption is

  1. the fluent decoder's, searched as the grounded one is (beam, length penalty, no repeated content words),
     with person words allowed only where the grounded model's person detector is at least
     `DecodeConfig.fluent_person_prob` sure of a person;
  2. unless the CNN is at least `DecodeConfig.ground_prob` sure of a noun that this caption does not name
     (singular or plural): then the photo is handed over to the grounded decoder, with all of its own rules
     (--require-object, its person gate), its next-word log-probabilities fused with `DecodeConfig.fusion` x the
     fluent decoder's (shallow fusion, Gulcehre et al. 2015, "On Using Monolingual Corpora in Neural Machine
     Translation": log p = log_softmax(log p_grounded + w log p_fluent); a word the fluent decoder lacks gets
     its log-probability of <unk>, its mass for words it does not know). The grounded decoder brings the noun,
     the fluent one COCO's way of saying the rest;
  3. where the fused caption names none of the nouns the photo was handed over for, the grounded decoder's
     own caption (fusion 0: always): a handed-over photo's caption names its noun as often as without fusion.

Nothing is trained for the rule, and it fails safe: where the CNN is unsure, or sure and the fluent caption
agrees, the fluent caption stands; only a disagreement hands the photo to the decoder built to say what the
CNN sees. Both decoders answer in one vocabulary, the grounded model's: the fluent decoder's own words are a
subset of it (it was built from a subset of the same captions with the same minimum count); it is searched in
its own words (the same search as in the shared vocabulary with every other word at -inf, at less cost per
step) and its hypotheses are written in shared ids, so rules downstream and text are the same for both.

Shapes: B batch, P positions, E feature, V the shared vocabulary, W the fluent decoder's own vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .config import DecodeConfig, ModelConfig
from .decoder import CaptionDecoder, State
from .decoding import Hypothesis, decode, doubt_ban
from .errors import CheckpointError
from .grounding import could_name, names_any
from .vocab import SPECIALS, Vocabulary

# what a fluent payload keeps of the checkpoint it came from, besides its weights
PAYLOAD_KEYS = ("model_config", "vocab", "train_config", "data", "scores", "held_out_scores", "epoch")


class FluentDecoder(nn.Module):
    """A CaptionDecoder trained with its own vocabulary (W words), searched in it and answering in the shared
    one (V words)."""

    def __init__(self, decoder: CaptionDecoder, own: Vocabulary, shared: Vocabulary, meta: dict[str, Any]):
        super().__init__()
        missing = [w for w in own.itos[: own.generated] if w not in shared.stoi]
        if missing:
            raise ValueError(f"the fluent decoder's vocabulary has {len(missing)} words the model's lacks "
                             f"(e.g. {missing[0]!r}); train it on a subset of the model's captions")
        self.decoder = decoder
        self.own = own
        self.meta = meta  # PAYLOAD_KEYS of its checkpoint: what it was trained on, and how
        self.to_shared = [shared.stoi[w] for w in own.itos[: own.generated]]  # (W,) shared id of each own word
        self.words = frozenset(own.itos[len(SPECIALS): own.generated])  # what its captions can say
        from_shared = torch.full((len(shared),), Vocabulary.unk_id, dtype=torch.long)
        from_shared[torch.tensor(self.to_shared)] = torch.arange(len(self.to_shared))
        self.register_buffer("from_shared", from_shared, persistent=False)  # (V,) own id of each word, else UNK

    def search(self, features: torch.Tensor, cfg: DecodeConfig, person_logit: torch.Tensor | None = None,
               ban: torch.Tensor | None = None) -> list[list[Hypothesis]]:
        """features (B,P,E) -> hypotheses per input in the shared vocabulary (`ban` (B,V): words it may not say).
        The search runs in the decoder's own W words (rules and person words looked up there), so no step spends
        time on the V - W words it cannot say; the same hypotheses as searching the shared vocabulary with those
        words at -inf."""
        decoder = self.decoder if person_logit is None else _WithPerson(self.decoder, person_logit)
        own_ban = None if ban is None else ban[:, torch.tensor(self.to_shared, device=ban.device)]  # (B,W)
        hyps = decode(decoder, features, self.own, cfg, ban=own_ban)
        for h in hyps:
            for hyp in h:
                hyp.tokens = [self.to_shared[t] for t in hyp.tokens]
        return hyps

    def payload(self) -> dict[str, Any]:
        return {**self.meta, "decoder_state": self.decoder.state_dict()}


def fluent_payload(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of a plain (non-copy) decoder -> what a model's "fluent" entry stores."""
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    if cfg.copy_nouns or cfg.is_video or cfg.attention:
        raise ValueError("a fluent decoder is a plain image decoder (no --copy-nouns, --attention or video)")
    return {**{k: ckpt[k] for k in PAYLOAD_KEYS if k in ckpt}, "decoder_state": ckpt["decoder_state"]}


def fluent_from_payload(payload: dict[str, Any], shared: Vocabulary, feature_dim: int,
                        path: str = "checkpoint") -> FluentDecoder:
    try:
        own = Vocabulary.from_dict(payload["vocab"])
        cfg = ModelConfig.from_dict(payload["model_config"])
        decoder = CaptionDecoder(len(own), feature_dim, cfg)
        decoder.load_state_dict(payload["decoder_state"])
        return FluentDecoder(decoder, own, shared, {k: payload[k] for k in PAYLOAD_KEYS if k in payload})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: bad fluent decoder: {str(exc).splitlines()[0]}") from None


class Fused:
    """The grounded decoder with the fluent one fused in (rule 2 of this module): steps in the shared vocabulary,
    both decoders' states side by side (the fluent one's keys prefixed "fluent.")."""

    def __init__(self, grounded, fluent: FluentDecoder, weight: float):
        self.grounded, self.fluent, self.weight = grounded, fluent, weight

    def init_state(self, features: torch.Tensor) -> State:
        own = self.fluent.decoder.init_state(features)
        return {**self.grounded.init_state(features), **{"fluent." + k: v for k, v in own.items()}}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (N,) shared ids -> log-probs (N,V) of the fused distribution, new state."""
        mine = {k: v for k, v in state.items() if not k.startswith("fluent.")}
        own = {k[len("fluent."):]: v for k, v in state.items() if k.startswith("fluent.")}
        grounded, mine = self.grounded.step(tokens, mine)  # (N,V)
        fluent, own = self.fluent.decoder.step(self.fluent.from_shared[tokens], own)  # (N,W)
        fluent = fluent.index_select(1, self.fluent.from_shared)  # (N,V): <unk>'s log-prob for words it lacks
        fused = torch.log_softmax(grounded + self.weight * fluent, dim=-1)  # (N,V)
        return fused, {**mine, **{"fluent." + k: v for k, v in own.items()}}


def doubted_nouns(decoder, features: torch.Tensor, vocab: Vocabulary, prob: float) -> torch.Tensor | None:
    """features (B,P,E) -> ban (B,V) of decoding.doubt_ban, from the copy head's classifier; None where there
    is nothing to doubt with (prob 0, or no copy head)."""
    copy = getattr(decoder, "copy", None)
    if not prob or copy is None:
        return None
    return doubt_ban(copy.class_probs(features).cpu(), vocab, prob)


class _WithPerson:
    """A decoder whose state also carries a person detector's logits (B,), for decoding's person gate."""

    def __init__(self, decoder, person_logit: torch.Tensor):
        self.decoder, self.person_logit = decoder, person_logit

    def init_state(self, features: torch.Tensor) -> State:
        return {**self.decoder.init_state(features), "person_logit": self.person_logit}

    def step(self, tokens: torch.Tensor, state: State):
        return self.decoder.step(tokens, state)


@torch.no_grad()
def decode_model(model, features: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig) -> list[list[Hypothesis]]:
    """features (B,P,E) -> hypotheses per input: the grounded decoder's, or for a model with a fluent decoder
    (and cfg.fluent) the rule of this module."""
    fluent = getattr(model, "fluent", None)
    ban = doubted_nouns(model.decoder, features, vocab, cfg.doubt_prob)  # (B,V) or None
    if fluent is None or not cfg.fluent:
        return decode(model.decoder, features, vocab, cfg, ban=ban)
    state = model.decoder.init_state(features)
    fluent_cfg = replace(cfg, require_object=False, person_prob=cfg.fluent_person_prob)
    if "cand_ids" not in state:
        return fluent.search(features, fluent_cfg, state.get("person_logit"))
    sure = state["cand_logp"] >= math.log(cfg.ground_prob)  # (B,K)
    nouns = [[vocab.itos[i] for i, ok in zip(ids, oks) if ok]
             for ids, oks in zip(state["cand_ids"].tolist(), sure.tolist())]
    # An input sure to be handed over (no noun the CNN is sure of is a word the fluent decoder has: a baboon,
    # a quokka) is not searched by it: its caption could not name one.
    searched = [b for b in range(len(nouns)) if not nouns[b] or could_name(nouns[b], fluent.words)]
    hyps: list[list[Hypothesis]] = [[] for _ in nouns]
    if searched:
        feats, person = features, state.get("person_logit")  # (B',P,E), (B',)
        if len(searched) < len(nouns):
            feats, person = features[searched], None if person is None else person[searched]
        for b, h in zip(searched, fluent.search(feats, fluent_cfg, person,
                                                None if ban is None else ban[searched])):
            hyps[b] = h

    def misses(b: int) -> bool:  # input b's best caption names none of the nouns the CNN is sure of
        return not (hyps[b] and names_any([vocab.itos[t] for t in hyps[b][0].tokens], nouns[b]))

    todo = [b for b in range(len(hyps)) if nouns[b] and misses(b)]
    written = {b: "fluent" for b in range(len(hyps))}
    if todo and cfg.fusion > 0:
        fused = decode(Fused(model.decoder, fluent, cfg.fusion), features[todo], vocab, cfg,
                       ban=None if ban is None else ban[todo])
        for b, h in zip(todo, fused):
            hyps[b], written[b] = h, "fused"
        todo = [b for b in todo if misses(b)]
    if todo:
        for b, h in zip(todo, decode(model.decoder, features[todo], vocab, cfg,
                                     ban=None if ban is None else ban[todo])):
            hyps[b], written[b] = h, "grounded"
    for b, h in enumerate(hyps):
        for hyp in h:
            hyp.decoder = written[b]
    return hyps
