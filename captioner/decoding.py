"""Decoding algorithms as pure functions over a step function (OpenNMT's split: the model knows nothing
about search, and search knows nothing about the model).

    step_fn(tokens (N,), state) -> (log_probs (N,V), state)
`state` is a dict of tensors with the batch on dim 0 (see decoder.py); an entry "alpha" (N,P), if present,
is the attention of the step just taken and is collected per output token.

Shapes: B batch, K beam, N = B*K flattened rows, V vocab, T steps, P attention positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import DecodeConfig
from .vocab import Vocabulary

State = dict[str, torch.Tensor]
StepFn = Callable[[torch.Tensor, State], "tuple[torch.Tensor, State]"]


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without BOS and EOS
    log_prob: float  # total log-probability of the tokens (and of EOS, if it ended)
    score: float  # what the search ranked by (length-normalised log-prob for beam search)
    finished: bool = True  # False when max_len cut it before EOS
    attention: torch.Tensor | None = field(default=None, repr=False)  # (len(tokens), P)


@dataclass
class Constraints:
    """Rules applied to every step's log-probs, the same for every search."""

    eos_id: int
    min_len: int = 0  # EOS is forbidden before this many words
    banned: tuple[int, ...] = ()  # ids never emitted (PAD, BOS, and UNK when suppressed)

    def apply(self, log_probs: torch.Tensor, step: int) -> torch.Tensor:
        """log_probs (N,V) -> (N,V) with forbidden tokens at -inf."""
        if self.banned or step < self.min_len:
            log_probs = log_probs.clone()
            if self.banned:
                log_probs[:, list(self.banned)] = float("-inf")
            if step < self.min_len:
                log_probs[:, self.eos_id] = float("-inf")
        return log_probs


def reorder_state(state: State, index: torch.Tensor) -> State:
    """Select rows of every state tensor: index (N',) -> state with batch N'."""
    return {k: v.index_select(0, index) for k, v in state.items()}


def greedy(step_fn: StepFn, state: State, batch_size: int, bos_id: int, max_len: int,
           constraints: Constraints) -> list[Hypothesis]:
    """The most probable word at each step, for B examples at once; one Hypothesis per example."""
    device = next(iter(state.values())).device
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    total = torch.zeros(batch_size, device=device)
    words: list[torch.Tensor] = []  # each (B,)
    alphas: list[torch.Tensor] = []  # each (B,P)
    for t in range(max_len):
        log_probs, state = step_fn(tokens, state)
        log_probs = constraints.apply(log_probs, t)  # (B,V)
        best, tokens = log_probs.max(dim=-1)  # (B,), (B,)
        total = total + torch.where(done, torch.zeros_like(best), best)
        words.append(torch.where(done, torch.full_like(tokens, constraints.eos_id), tokens))
        if "alpha" in state:
            alphas.append(state["alpha"])
        done = done | (tokens == constraints.eos_id)
        if bool(done.all()):
            break
    seq = torch.stack(words, 1).tolist()  # (B,T)
    att = torch.stack(alphas, 1) if alphas else None  # (B,T,P)
    out = []
    for b in range(batch_size):
        ended = constraints.eos_id in seq[b]
        ids = seq[b][: seq[b].index(constraints.eos_id)] if ended else seq[b]
        lp = float(total[b])
        out.append(Hypothesis(ids, lp, lp, ended, att[b, : len(ids)].cpu() if att is not None else None))
    return out


def constraints_for(cfg: DecodeConfig, vocab: Vocabulary) -> Constraints:
    banned = (vocab.pad_id, vocab.bos_id) + ((vocab.unk_id,) if cfg.suppress_unk else ())
    return Constraints(eos_id=vocab.eos_id, min_len=cfg.min_len, banned=banned)


@torch.no_grad()
def decode(decoder, features: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig) -> list[list[Hypothesis]]:
    """Caption a batch of encoded inputs: features (B,P,E) -> per example, `num_captions` hypotheses, best first.
    `decoder` is anything with init_state(features) and step(tokens, state)."""
    cfg.validate()
    state = decoder.init_state(features)
    B = features.size(0)
    constraints = constraints_for(cfg, vocab)
    if cfg.method == "greedy":
        return [[h] for h in greedy(decoder.step, state, B, vocab.bos_id, cfg.max_len, constraints)]
    raise ValueError(f"decoding method {cfg.method!r} is not available")
