"""Decoding algorithms as pure functions over a step function (OpenNMT's split: the model knows nothing
about search, and search knows nothing about the model).

    step_fn(tokens (N,), state) -> (log_probs (N,V), state)
`state` is a dict of tensors with the batch on dim 0 (see decoder.py); an entry "alpha" (N,P), if present,
is the attention of the step just taken and is collected per output token. A step function returns new
tensors for the entries it changes and the others as they came (it never updates an entry in place): beam
search selects an untouched entry's rows only when examples leave the batch.

Shapes: B batch, K beam, N rows in flight (B*K for beam search), V vocab, t steps so far, P positions.

Beam search is batched over B x K (one topk over (B, K*V) per step, 2K candidates so finished hypotheses
never starve the live beams, state reordered with one index_select), with the GNMT length penalty
lp(len) = ((5 + len) / 6) ** alpha (Wu et al., 2016). Sampling supports temperature, top-k and nucleus
top-p (Holtzman et al., 2020). All three share one set of rules (`Rules`): banned tokens, min length,
n-gram blocking (Paulus et al., 2018) and the CTRL repetition penalty (Keskar et al., 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import torch

from .config import DecodeConfig
from .errors import ConfigError
from .grammar import FUNCTION_WORDS, GROUP_WORDS
from .grounding import COCO_OBJECTS, PERSON_WORDS, noun_forms
from .nouns import default_nouns
from .vocab import Vocabulary

State = dict[str, torch.Tensor]
StepFn = Callable[[torch.Tensor, State], "tuple[torch.Tensor, State]"]
NEG_INF = float("-inf")
# Words a caption may not end with (DecodeConfig.no_bad_endings). Self-critical training learns to end on them
# ("a cat sitting on a table with a"): CIDEr-D still pays for the n-grams before. The list is the one
# ruotianluo/self-critical.pytorch removes at decoding (its --remove_bad_endings).
BAD_ENDINGS = frozenset("a an the in for at of with before after on upon near to is are am".split())
# Nouns for a group or a container of things (DecodeConfig.no_article_after_collective): in English what follows
# "a group of", "a vase of" is plural or a mass noun, never "a"/"an" (0 of the 634 "group of" and 181 "couple of"
# in the coco2017 train captions). Self-critical training learns "a group of a giraffe", "a vase of a teddy
# bear": the article is CIDEr-D's cheap bridge from a cliché's opening to the noun.
COLLECTIVES = GROUP_WORDS | frozenset(
    "bunch bunches stack stacks pile piles lots variety assortment collection vase vases bowl bowls cup cups basket "
    "baskets".split())
ARTICLES = ("a", "an")


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without BOS and EOS
    log_prob: float  # the model's total log-probability of the tokens (and of EOS, if it ended)
    score: float  # what the search ranked by (after penalties and length normalisation)
    finished: bool = True  # False when max_len cut it before EOS
    attention: torch.Tensor | None = field(default=None, repr=False)  # (len(tokens), P)
    decoder: str | None = None  # models with two decoders (fluent.py): which wrote it: "fluent", "grounded", "fused"


@dataclass
class Rules:
    """What every search applies to each step's log-probs before choosing."""

    eos_id: int
    min_len: int = 0  # EOS is forbidden before this many words
    banned: tuple[int, ...] = ()  # ids never emitted (PAD, BOS, and UNK when suppressed)
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    once: torch.Tensor | None = None  # (V,) bool: words that may be said at most once (content words)
    no_end: torch.Tensor | None = None  # (V,) bool: words a caption may not end with (BAD_ENDINGS)
    # no "a group of a ...": the word ids of "of" and of the articles, and (V,) bool: COLLECTIVES
    collective: torch.Tensor | None = None
    of_id: int = -1
    articles: tuple[int, ...] = ()

    def apply(self, log_probs: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """log_probs (N,V), seqs (N,t) words so far -> adjusted scores (N,V); forbidden tokens at -inf."""
        out = log_probs.clone()
        if self.banned:
            out.index_fill_(1, torch.tensor(self.banned, device=out.device), NEG_INF)
        if seqs.size(1) < self.min_len:
            out[:, self.eos_id] = NEG_INF
        if self.no_end is not None and seqs.size(1):
            ends_badly = self.no_end.to(out.device)[seqs[:, -1]]  # (N,)
            out[:, self.eos_id] = out[:, self.eos_id].masked_fill(ends_badly, NEG_INF)
        if self.collective is not None and seqs.size(1) >= 2:
            after = (seqs[:, -1] == self.of_id) & self.collective.to(out.device)[seqs[:, -2]]  # (N,) "group of"
            if bool(after.any()):
                out[after.nonzero().flatten()[:, None], torch.tensor(self.articles, device=out.device)] = NEG_INF
        if self.repetition_penalty != 1.0 and seqs.size(1):
            # log-probs are <= 0, so multiplying by the penalty (> 1) lowers tokens already said.
            said = torch.zeros_like(out, dtype=torch.bool).scatter_(1, seqs, True)  # (N,V)
            out = torch.where(said, out * self.repetition_penalty, out)
        if self.once is not None and seqs.size(1):
            # Only the t words said so far can be closed: written back in place of a (N,V) mask per step.
            closed = self.once.to(out.device)[seqs]  # (N,t)
            out.scatter_(1, seqs, out.gather(1, seqs).masked_fill(closed, NEG_INF))
        n = self.no_repeat_ngram_size
        if n and seqs.size(1) >= n:
            windows = seqs.unfold(1, n, 1)  # (N,W,n): every n-gram said so far
            prefix = seqs[:, seqs.size(1) - n + 1:].unsqueeze(1)  # (N,1,n-1): the last n-1 words
            repeats = (windows[:, :, :-1] == prefix).all(-1)  # (N,W): n-grams that the next word would repeat
            hits = torch.zeros_like(out).scatter_add_(1, windows[:, :, -1], repeats.to(out.dtype))  # (N,V)
            out = out.masked_fill(hits > 0, NEG_INF)
        return out


def rules_for(cfg: DecodeConfig, vocab: Vocabulary) -> Rules:
    banned = (vocab.pad_id, vocab.bos_id) + ((vocab.unk_id,) if cfg.suppress_unk else ())
    once = no_end = collective = None
    if cfg.no_repeat_words:
        once = torch.tensor([w.isalpha() and w not in FUNCTION_WORDS for w in vocab.itos])  # (V,)
    if cfg.no_bad_endings:
        no_end = torch.tensor([w in BAD_ENDINGS for w in vocab.itos])  # (V,)
    articles = tuple(vocab.stoi[w] for w in ARTICLES if w in vocab.stoi)
    if cfg.no_article_after_collective and "of" in vocab.stoi and articles:
        collective = torch.tensor([w in COLLECTIVES for w in vocab.itos])  # (V,)
    return Rules(vocab.eos_id, cfg.min_len, banned, cfg.no_repeat_ngram_size, cfg.repetition_penalty, once, no_end,
                 collective, vocab.stoi.get("of", -1), articles)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT: ((5 + length) / 6) ** alpha; 1 when alpha is 0."""
    return ((5.0 + length) / 6.0) ** alpha


def reorder_state(state: State, index: torch.Tensor, keep: frozenset[str] = frozenset()) -> State:
    """Select rows of every state tensor: index (N',) -> state with N' rows; entries in `keep` are passed as
    they are (the caller knows that selecting their rows would change nothing)."""
    return {k: v if k in keep else v.index_select(0, index) for k, v in state.items()}


def _device(state: State) -> torch.device:
    return next(iter(state.values())).device


def _append_attention(att: torch.Tensor | None, state: State) -> torch.Tensor | None:
    """att (N,t,P) + this step's state["alpha"] (N,P) -> (N,t+1,P); None for models without attention."""
    if "alpha" not in state:
        return None
    alpha = state["alpha"].unsqueeze(1)
    return alpha if att is None else torch.cat([att, alpha], 1)


def _decode_rows(step_fn: StepFn, state: State, n: int, bos_id: int, max_len: int, rules: Rules,
                 choose: Callable[[torch.Tensor], torch.Tensor]) -> list[Hypothesis]:
    """Extend n rows one word per step until every row has ended; `choose` maps the rule-adjusted scores
    (n,V) to the next word of each row (n,). One Hypothesis per row: its words, the model's log-probability,
    and as score the sum of the adjusted scores of the chosen words."""
    device = _device(state)
    tokens = torch.full((n,), bos_id, dtype=torch.long, device=device)
    seqs = torch.zeros(n, 0, dtype=torch.long, device=device)  # (n,t)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    logp = torch.zeros(n, device=device)
    score = torch.zeros(n, device=device)
    att = None
    for _ in range(max_len):
        log_probs, state = step_fn(tokens, state)
        adjusted = rules.apply(log_probs, seqs)  # (n,V)
        tokens = choose(adjusted)  # (n,)
        live = ~done
        logp = logp + torch.where(live, log_probs.gather(1, tokens[:, None]).squeeze(1), torch.zeros_like(logp))
        score = score + torch.where(live, adjusted.gather(1, tokens[:, None]).squeeze(1), torch.zeros_like(score))
        tokens = torch.where(done, torch.full_like(tokens, rules.eos_id), tokens)
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        att = _append_attention(att, state)
        done = done | (tokens == rules.eos_id)
        if bool(done.all()):
            break
    out = []
    for r, row in enumerate(seqs.tolist()):
        ended = rules.eos_id in row
        ids = row[: row.index(rules.eos_id)] if ended else row
        a = att[r, : len(ids)].cpu() if att is not None else None
        out.append(Hypothesis(ids, float(logp[r]), float(score[r]), ended, a))
    return out


def greedy(step_fn: StepFn, state: State, batch_size: int, bos_id: int, max_len: int,
           rules: Rules) -> list[list[Hypothesis]]:
    """The highest-scoring word at each step, for B examples at once; one Hypothesis per example."""
    rows = _decode_rows(step_fn, state, batch_size, bos_id, max_len, rules, lambda adj: adj.argmax(dim=-1))
    return [[h] for h in rows]


def beam_search(step_fn: StepFn, state: State, batch_size: int, beam_size: int, bos_id: int, max_len: int,
                rules: Rules, num_captions: int = 1, alpha: float = 0.0) -> list[list[Hypothesis]]:
    """Batched beam search; per example the `num_captions` best hypotheses, best first.

    Finished hypotheses are ranked by score / lp(len). An example leaves the batch once it has K finished
    hypotheses and no live beam can still beat the worst of them. At max_len, unfinished beams fill up
    what finished ones do not; when the rules forbid every continuation of an example that has no finished
    hypothesis, its best beam so far is returned unfinished (possibly with no words): never an empty result.
    """
    K, device = beam_size, _device(state)
    examples = list(range(batch_size))  # original index of each example still in flight
    rows = torch.arange(batch_size, device=device).repeat_interleave(K)  # (B*K,): beam rows per example
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)  # the first step: one row each
    seqs = torch.zeros(batch_size * K, 0, dtype=torch.long, device=device)  # (N,t)
    beam_score = torch.full((batch_size, K), NEG_INF, device=device)
    beam_score[:, 0] = 0.0  # step 0 expands beam 0 only: the K copies are identical
    beam_logp = torch.zeros(batch_size * K, device=device)  # (N,) true model log-probs
    att = None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]

    for t in range(max_len):
        before = state
        log_probs, state = step_fn(tokens, state)  # (N,V)
        if t == 0:  # an example's K beams begin as copies of one: its first step is taken once, then copied
            log_probs, state = log_probs[rows], reorder_state(state, rows)  # (B,V) -> (B*K,V)
        # What the step left as it was (the image's candidates, concept, ...) is the same on an example's K
        # rows: reordering beams within examples cannot change it, so it is selected only when examples leave.
        untouched = frozenset(k for k, v in state.items() if before.get(k) is v)
        att = _append_attention(att, state)
        V = log_probs.size(1)
        cand = rules.apply(log_probs, seqs).add_(beam_score.view(-1, 1))  # (N,V)
        top_score, top_idx = cand.view(len(examples), K * V).topk(min(2 * K, K * V), dim=1)  # (B',2K)
        src_row = top_idx // V + torch.arange(len(examples), device=device)[:, None] * K  # (B',2K) row in N
        word = top_idx % V  # (B',2K)
        word_logp = beam_logp[src_row] + log_probs[src_row, word]  # (B',2K)

        keep_rows, keep_words, keep_scores, keep_logp, still = [], [], [], [], []
        top = zip(top_score.tolist(), src_row.tolist(), word.tolist(), word_logp.tolist())  # per example
        for e, (ex, (scores, srcs, words, logps)) in enumerate(zip(examples, top)):
            live = []
            for rank, (s, r, w, lp) in enumerate(zip(scores, srcs, words, logps)):
                if s == NEG_INF:
                    break  # sorted: the rest are forbidden too
                if w == rules.eos_id:
                    if rank < K:  # an EOS ranked below K would not have survived as one of K beams
                        finished[ex].append(_hyp(seqs[r], s, lp, True, att, r, alpha))
                elif len(live) < K:
                    live.append((r, w, s, lp))
            # No live beam can end better than its score now over the largest length penalty (scores <= 0).
            live_bound = max((s for _, _, s, _ in live), default=NEG_INF) / length_penalty(max_len, alpha)
            done = sorted(finished[ex], key=lambda h: -h.score)[:K]
            finished[ex] = done
            # Stopping once the n-th best cannot be beaten gives the same n-best as waiting for K of them.
            if not live and not done:  # every continuation is forbidden: what it has said so far, unfinished
                finished[ex] = [_hyp(seqs[r], float(beam_score[e, k]), float(beam_logp[r]), False, att, r, alpha)
                                for k, r in enumerate(range(e * K, e * K + K)) if beam_score[e, k] > NEG_INF][:1]
            if (len(done) >= num_captions and live_bound <= done[num_captions - 1].score) or not live:
                continue  # this example is complete: it leaves the batch
            while len(live) < K:  # pad with dead beams so every example keeps K rows
                live.append((live[0][0], rules.eos_id, NEG_INF, 0.0))
            still.append(ex)
            for r, w, s, lp in live:
                keep_rows.append(r), keep_words.append(w), keep_scores.append(s), keep_logp.append(lp)

        if not still:
            examples = []
            break
        select = torch.tensor(keep_rows, device=device)
        tokens = torch.tensor(keep_words, device=device)
        state = reorder_state(state, select, untouched if len(still) == len(examples) else frozenset())
        seqs = torch.cat([seqs[select], tokens[:, None]], 1)
        att = att[select] if att is not None else None
        beam_score = torch.tensor(keep_scores, device=device).view(len(still), K)
        beam_logp = torch.tensor(keep_logp, device=device)
        examples = still

    # max_len reached: the live beams of unfinished examples become (unfinished) candidates.
    for e, ex in enumerate(examples):
        for k in range(K):
            r = e * K + k
            s = float(beam_score[e, k])
            if s > NEG_INF:
                finished[ex].append(_hyp(seqs[r], s, float(beam_logp[r]), False, att, r, alpha))
    return [sorted(h, key=lambda h: (not h.finished, -h.score))[:num_captions] for h in finished]


def constrained_beam_search(step_fn: StepFn, state: State, batch_size: int, beam_size: int, bos_id: int,
                            max_len: int, rules: Rules, meets: torch.Tensor, num_captions: int = 1,
                            alpha: float = 0.0) -> list[list[Hypothesis]]:
    """Beam search whose captions must say one of the words `meets` (B,V) bool marks for each example:
    constrained beam search (Anderson et al., 2017, "Guided Open Vocabulary Image Captioning with Constrained
    Beam Search") for one disjunctive constraint. Each example keeps two banks of K beams: rows e*2K .. e*2K+K-1
    have not said a word of `meets` yet, the next K have. A step fills the first bank with the best
    continuations that do not say one, the second with the best of its own continuations and of the first
    bank's that do; only the second bank may end. So the word goes wherever the model finds it most probable,
    and the rest of the caption is searched around it.

    Ranking: a finished caption scores (s - c) / lp(len) + c, where s is the sum of its adjusted log-probs and
    c the one of the constraint word: every caption pays for that word once, so length normalisation must not
    spread its cost (a noun the model finds unlikely would otherwise make run-ons win, as in `forcing`). With
    alpha 0 this is plain constrained beam search. Where max_len comes first, the second bank's beams are
    returned unfinished (finished=False, after any finished ones); where no beam met the constraint (its words
    forbidden), nothing."""
    K, device = beam_size, _device(state)
    rows = torch.arange(batch_size, device=device).repeat_interleave(2 * K)  # (B*2K,) example of each row
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)  # the first step: one row each
    seqs = torch.zeros(batch_size * 2 * K, 0, dtype=torch.long, device=device)  # (N,t)
    beam_score = torch.full((batch_size, 2 * K), NEG_INF, device=device)  # (B',2K): both banks
    beam_score[:, 0] = 0.0  # the empty caption, in the first bank
    beam_logp = torch.zeros(batch_size * 2 * K, device=device)  # (N,) true model log-probs
    beam_cost = torch.zeros(batch_size * 2 * K, device=device)  # (N,) c: the constraint word's adjusted log-prob
    examples = list(range(batch_size))  # original index of each example still in flight
    meets = meets.to(device)
    att = None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]

    def ranked(s: float, c: float, length: int) -> float:
        return (s - c) / length_penalty(length, alpha) + c

    for t in range(max_len):
        log_probs, state = step_fn(tokens, state)  # (N,V)
        if t == 0:
            log_probs, state = log_probs[rows], reorder_state(state, rows)  # (B,V) -> (B*2K,V)
        att = _append_attention(att, state)
        B_, V = len(examples), log_probs.size(1)
        adjusted = rules.apply(log_probs, seqs)  # (N,V)
        cand = (adjusted + beam_score.view(-1, 1)).view(B_, 2, K, V)  # (B',bank,K,V)
        says = meets[examples].view(B_, 1, V)  # (B',1,V)
        not_yet = cand[:, 0].masked_fill(says, NEG_INF)  # (B',K,V)
        not_yet[:, :, rules.eos_id] = NEG_INF  # the first bank may not end
        met = torch.cat([cand[:, 1], cand[:, 0].masked_fill(~says, NEG_INF)], 1)  # (B',2K,V): bank 2, then bank 1
        first_score, first_idx = not_yet.view(B_, K * V).topk(K, dim=1)  # (B',K)
        met_score, met_idx = met.view(B_, 2 * K * V).topk(2 * K, dim=1)  # (B',2K)
        base = torch.arange(B_, device=device)[:, None] * 2 * K  # (B',1): each example's first row
        from_second = met_idx // V < K  # (B',2K): a second-bank beam going on, else one meeting the constraint
        met_src = base + torch.where(from_second, K + met_idx // V, met_idx // V - K)  # (B',2K)
        src = torch.cat([base + first_idx // V, met_src], 1)  # (B',3K) rows in N
        word = torch.cat([first_idx, met_idx], 1) % V  # (B',3K)
        word_logp = beam_logp[src] + log_probs[src, word]  # (B',3K)
        cost = torch.cat([torch.zeros_like(first_score), torch.where(
            from_second, beam_cost[met_src], adjusted[met_src, met_idx % V])], 1)  # (B',3K)
        scores = torch.cat([first_score, met_score], 1)  # (B',3K)

        keep_rows, keep_words, keep_scores, keep_logp, keep_cost, still = [], [], [], [], [], []
        top = zip(scores.tolist(), src.tolist(), word.tolist(), word_logp.tolist(), cost.tolist())
        for ex, (s_, r_, w_, lp_, c_) in zip(examples, top):
            first = list(zip(r_[:K], w_[:K], s_[:K], lp_[:K], c_[:K]))
            live = []
            for rank, (s, r, w, lp, c) in enumerate(zip(s_[K:], r_[K:], w_[K:], lp_[K:], c_[K:])):
                if s == NEG_INF:
                    break  # sorted: the rest are forbidden too
                if w == rules.eos_id:
                    if rank < K:  # as in beam_search: an EOS below K would not have survived as a beam
                        h = _hyp(seqs[r], s, lp, True, att, r, 0.0)
                        h.score = ranked(s, c, len(h.tokens))
                        finished[ex].append(h)
                elif len(live) < K:
                    live.append((r, w, s, lp, c))
            done = sorted(finished[ex], key=lambda h: -h.score)[:K]
            finished[ex] = done
            # No beam can end better than its score now, its own words over the largest length penalty.
            bound = max([ranked(s, c, max_len) for _, _, s, _, c in live + first if s > NEG_INF], default=NEG_INF)
            if bound == NEG_INF or (len(done) >= num_captions and bound <= done[num_captions - 1].score):
                continue  # this example is complete: it leaves the batch
            live += [(first[0][0], rules.eos_id, NEG_INF, 0.0, 0.0)] * (K - len(live))  # dead beams: K a bank
            still.append(ex)
            for r, w, s, lp, c in first + live:
                keep_rows.append(r), keep_words.append(w), keep_scores.append(s), keep_logp.append(lp)
                keep_cost.append(c)
        if not still:
            examples = []
            break
        select = torch.tensor(keep_rows, device=device)
        tokens = torch.tensor(keep_words, device=device)
        state = reorder_state(state, select)
        seqs = torch.cat([seqs[select], tokens[:, None]], 1)
        att = att[select] if att is not None else None
        beam_score = torch.tensor(keep_scores, device=device).view(len(still), 2 * K)
        beam_logp = torch.tensor(keep_logp, device=device)
        beam_cost = torch.tensor(keep_cost, device=device)
        examples = still
    # max_len reached: the second bank's live beams become (unfinished) candidates, ranked after finished ones.
    for e, ex in enumerate(examples):
        for r in range(e * 2 * K + K, e * 2 * K + 2 * K):
            s = float(beam_score.view(-1)[r])
            if s > NEG_INF:
                h = _hyp(seqs[r], s, float(beam_logp[r]), False, att, r, 0.0)
                h.score = ranked(s, float(beam_cost[r]), len(h.tokens))
                finished[ex].append(h)
    return [sorted(h, key=lambda h: (not h.finished, -h.score))[:num_captions] for h in finished]


def _hyp(seq: torch.Tensor, score: float, logp: float, ended: bool, att: torch.Tensor | None, row: int,
         alpha: float) -> Hypothesis:
    """A hypothesis from beam row `row`: its words so far, ranked by score / lp(len)."""
    ids = seq.tolist()
    a = att[row, : len(ids)].cpu() if att is not None else None
    return Hypothesis(ids, logp, score / length_penalty(len(ids), alpha), ended, a)


def sample(step_fn: StepFn, state: State, batch_size: int, num_samples: int, bos_id: int, max_len: int,
           rules: Rules, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> list[list[Hypothesis]]:
    """`num_samples` random captions per example (highest log-probability first); reproducible with a seeded
    generator. Rows are example-major: example b's samples are rows b*S .. b*S+S-1."""
    S = num_samples
    state = reorder_state(state, torch.arange(batch_size, device=_device(state)).repeat_interleave(S))

    def draw(adjusted: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(_filter_top_k_top_p(adjusted / temperature, top_k, top_p), dim=-1)  # (N,V)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(adjusted.device)

    rows = _decode_rows(step_fn, state, batch_size * S, bos_id, max_len, rules, draw)
    return [sorted(rows[b * S:(b + 1) * S], key=lambda h: -h.log_prob) for b in range(batch_size)]


def _filter_top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """scores (N,V) -> the same with everything outside the top-k / the top-p nucleus at -inf."""
    if top_k and top_k < scores.size(1):
        kth = scores.topk(top_k, dim=1).values[:, -1:]  # (N,1)
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=1, descending=True)
        cum = torch.softmax(sorted_scores, dim=1).cumsum(dim=1)
        drop_sorted = cum - torch.softmax(sorted_scores, dim=1) >= top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, NEG_INF)
    return scores


REQUIRE_PROB = 0.5  # how sure the CNN must be of a noun to count as confident (--require-object's default)


def forcing(step_fn: StepFn) -> StepFn:
    """Rows begin with given words: state["force"] (N,L) word ids to say first (-1 = free from there on) and
    state["force_t"] (N,) steps taken. A forced word gets log-probability 0 and every other word -inf: the
    search ranks the captions by the words the model chose after it (a forced noun the model finds unlikely
    would otherwise make length normalisation prefer run-ons), and their log_prob covers those words only."""
    def step(tokens: torch.Tensor, state: State):
        log_probs, state = step_fn(tokens, state)
        t, force = state["force_t"], state["force"]
        L = force.size(1)
        want = force.gather(1, t.clamp(max=L - 1).unsqueeze(1)).squeeze(1)  # (N,)
        want = torch.where(t < L, want, torch.full_like(want, -1))
        if bool((want >= 0).any()):
            index = want.clamp(min=0).unsqueeze(1)  # (N,1)
            forced = torch.full_like(log_probs, NEG_INF).scatter(1, index, 0.0)
            log_probs = torch.where((want >= 0).unsqueeze(1), forced, log_probs)
        return log_probs, {**state, "force_t": t + 1}
    return step


def banning(step_fn: StepFn) -> StepFn:
    """Per-row banned words: state["ban"] (N,V) bool, batch first so searches reorder it."""
    def step(tokens: torch.Tensor, state: State):
        log_probs, state = step_fn(tokens, state)
        return log_probs.masked_fill(state["ban"], NEG_INF), state
    return step


def person_ban(person_logit: torch.Tensor, vocab: Vocabulary, prob: float = 0.5) -> torch.Tensor:
    """Rows whose person detector is less than `prob` sure of a person may say no person word:
    person_logit (B,) -> ban (B,V)."""
    words = torch.tensor([w in PERSON_WORDS for w in vocab.itos], device=person_logit.device)  # (V,)
    return (person_logit < math.log(prob / (1 - prob))).unsqueeze(1) & words.unsqueeze(0)


@lru_cache(maxsize=8)
def _doubtable(words: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A vocabulary's words -> the doubtable nouns' rows of the noun table (N',) and their forms (N',V) bool:
    COCO's object nouns that ImageNet has classes for, by the table this code ships (nouns.py), person words
    left to the person detector."""
    nouns = default_nouns()
    stoi = {w: i for i, w in enumerate(words)}
    objects = {w.replace("_", " ") for w in COCO_OBJECTS} - PERSON_WORDS
    rows = [n for n, w in enumerate(nouns.words) if w in objects and w in stoi]
    forms = torch.zeros(len(rows), len(words), dtype=torch.bool)
    for r, n in enumerate(rows):
        for form in noun_forms(nouns.words[n]):
            if form in stoi:
                forms[r, stoi[form]] = True
    return torch.tensor(rows, dtype=torch.long), forms


def doubt_ban(class_probs: torch.Tensor, vocab: Vocabulary, prob: float) -> torch.Tensor:
    """Rows may say no form of a COCO object the CNN could recognise but gives less than `prob` (the sum of its
    ImageNet classes): class_probs (B,C) -> ban (B,V). A COCO decoder names its training photos' objects by
    habit ("a bird sitting on a table with a teddy bear"); an ImageNet classifier that sees a teddy bear gives
    it far more than a few thousandths."""
    rows, forms = _doubtable(tuple(vocab.itos))
    noun_p = default_nouns().noun_probs(class_probs.float())[:, rows]  # (B,N')
    doubted = (noun_p < prob).float() @ forms.float()  # (B,V): how many doubted nouns a word is a form of
    kept = (noun_p >= prob).float() @ forms.float()  # a form of a noun it does not doubt stays
    return (doubted > 0) & (kept == 0)


@torch.no_grad()
def decode(decoder, features: torch.Tensor, vocab: Vocabulary, cfg: DecodeConfig,
           prefix: torch.Tensor | None = None, ban: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Caption a batch of encoded inputs: features (B,P,E) -> per example `num_captions` hypotheses, best first.
    `decoder` is anything with init_state(features) and step(tokens, state). `prefix` (B,L): words each caption
    must begin with (-1 = none from there on). `ban` (B,V): words each caption may not say (besides the person
    gate's)."""
    cfg.validate()
    state = decoder.init_state(features)
    step = decoder.step
    if cfg.require_object and "cand_ids" not in state:
        raise ConfigError("--require-object needs a copy model (captioner train --copy-nouns K)")
    if cfg.person_gate and "person_logit" in state:  # a model without a detector decodes as before
        person = person_ban(state["person_logit"], vocab, cfg.person_prob)
        ban = person if ban is None else ban.to(person.device) | person
    if ban is not None:
        state = {**state, "ban": ban.to(features.device)}
        step = banning(step)
    if prefix is not None:
        state = {**state, "force": prefix.to(features.device),
                 "force_t": torch.zeros(features.size(0), dtype=torch.long, device=features.device)}
        step = forcing(step)
    B = features.size(0)
    rules = rules_for(cfg, vocab)
    if cfg.method == "greedy":
        hyps = greedy(step, state, B, vocab.bos_id, cfg.max_len, rules)
    elif cfg.method == "beam":
        hyps = beam_search(step, state, B, cfg.beam_size, vocab.bos_id, cfg.max_len, rules,
                           cfg.num_captions, cfg.length_penalty)
    else:
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        hyps = sample(step, state, B, cfg.num_captions, vocab.bos_id, cfg.max_len, rules, cfg.temperature,
                      cfg.top_k, cfg.top_p, generator)
    if cfg.require_object and prefix is None:
        hyps = _name_the_subject(decoder, step, state, features, vocab, cfg, rules, hyps)
    return hyps


def _name_the_subject(decoder, step: StepFn, state: State, features: torch.Tensor, vocab: Vocabulary,
                      cfg: DecodeConfig, rules: Rules, hyps: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
    """--require-object: a caption that names none of the nouns the CNN is at least cfg.require_prob sure of
    (singular or plural) is searched again with constrained beam search (greedy: one beam a bank), which must say
    one of them: the noun goes where the model finds it most probable and the caption is searched around it
    ("a group of people standing around a snake"). Sampled captions are begun with the most probable noun
    instead, "a <noun> ..." (constrained search is not sampling). Where no constrained caption ends within
    max_len, the free one stays. `step` and `state` are decode's: the person gate and every rule apply."""
    confident = state["cand_logp"] >= math.log(cfg.require_prob)  # (B,K), candidates most probable first
    meets = torch.zeros(len(hyps), len(vocab), dtype=torch.bool)  # (B,V): the words that name a confident noun
    for b, (ids, oks) in enumerate(zip(state["cand_ids"].tolist(), confident.tolist())):
        for form in (f for i, ok in zip(ids, oks) if ok for f in noun_forms(vocab.itos[i])):
            if form in vocab.stoi:
                meets[b, vocab.stoi[form]] = True
    todo = [b for b, h in enumerate(hyps) if h and bool(meets[b].any()) and not bool(meets[b, h[0].tokens].any())]
    if not todo:
        return hyps
    if cfg.method == "sample":
        article = vocab.stoi.get("a")
        if article is None:
            return hyps
        noun = state["cand_ids"][todo, 0]  # (S,)
        prefix = torch.stack([torch.full_like(noun, article), noun], dim=1)  # (S,2): "a <noun>"
        ban = state["ban"][todo] if "ban" in state else None
        again = decode(decoder, features[todo], vocab, replace(cfg, require_object=False), prefix=prefix, ban=ban)
    else:
        rows, beam = torch.tensor(todo, device=features.device), cfg.method == "beam"
        again = constrained_beam_search(step, reorder_state(state, rows), len(todo), cfg.beam_size if beam else 1,
                                        vocab.bos_id, cfg.max_len, rules, meets[todo], cfg.num_captions,
                                        cfg.length_penalty if beam else 0.0)
    for b, h in zip(todo, again):
        if h and h[0].finished:
            hyps[b] = [x for x in h if x.finished]
    return hyps
