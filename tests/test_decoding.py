"""Search algorithms tested with scripted step functions: hand-made distributions, no model at all."""
import itertools
import math

import pytest
import torch

from captioner.decoding import (Hypothesis, Rules, beam_search, constrained_beam_search, greedy, length_penalty,
                                sample)

PAD, BOS, EOS, UNK = 0, 1, 2, 3
A, B, C, D = 4, 5, 6, 7
V = 8
RULES = Rules(eos_id=EOS, banned=(PAD, BOS))


def log(p):
    return math.log(p) if p > 0 else float("-inf")


class Markov:
    """Next-word distribution by (example, previous word): table (examples, V, V) of log-probs."""

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def state(self, examples):
        return {"ex": torch.as_tensor(examples, dtype=torch.long)}

    def __call__(self, tokens, state):
        self.calls += 1
        return self.table[state["ex"], tokens], state


def random_markov(n_examples, seed=0, eos_boost=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_examples, V, V, generator=g) * 2
    logits[:, :, EOS] += eos_boost
    return Markov(torch.log_softmax(logits, -1))


def markov_from(rows):
    """rows: {prev: {next: prob}} for one example -> Markov with unlisted words impossible."""
    table = torch.full((1, V, V), float("-inf"))
    for prev, dist in rows.items():
        for nxt, p in dist.items():
            table[0, prev, nxt] = log(p)
    return Markov(table)


class Tree:
    """Next-word distribution by the whole prefix: {prefix tuple: {word: prob}}. State: a prefix id per row."""

    def __init__(self, dists, vocab_size=V):
        self.dists = dists
        self.vocab_size = vocab_size
        self.ids = {(): 0}
        self.prefixes = [()]

    def state(self, n):
        return {"node": torch.zeros(n, dtype=torch.long)}

    def __call__(self, tokens, state):
        rows, nodes = [], []
        for tok, node in zip(tokens.tolist(), state["node"].tolist()):
            prefix = self.prefixes[node] + (() if tok == BOS else (tok,))
            if prefix not in self.ids:
                self.ids[prefix] = len(self.prefixes)
                self.prefixes.append(prefix)
            nodes.append(self.ids[prefix])
            lp = torch.full((self.vocab_size,), float("-inf"))
            for w, p in self.dists.get(prefix, {EOS: 1.0}).items():
                lp[w] = log(p)
            rows.append(lp)
        return torch.stack(rows), {"node": torch.tensor(nodes)}


def run_beam(step, state, n, k, max_len=10, rules=RULES, **kw):
    return beam_search(step, state, n, k, BOS, max_len, rules, **kw)


def test_beam_size_one_equals_greedy():
    step = random_markov(6, seed=1, eos_boost=1.0)
    g = greedy(step, step.state(range(6)), 6, BOS, 12, RULES)
    b = run_beam(step, step.state(range(6)), 6, 1, max_len=12)
    assert [h[0].tokens for h in b] == [h[0].tokens for h in g]
    assert [h[0].log_prob for h in b] == pytest.approx([h[0].log_prob for h in g], abs=1e-5)


def test_beam_finds_the_more_probable_caption_that_greedy_misses():
    # greedy takes A (0.6) and then never ends; B EOS has probability 0.4 * 0.9 = 0.36.
    step = markov_from({BOS: {A: 0.6, B: 0.4}, A: {A: 0.4, C: 0.3, EOS: 0.3}, C: {A: 0.5, EOS: 0.5},
                        B: {EOS: 0.9, A: 0.1}})
    g = greedy(step, step.state([0]), 1, BOS, 6, RULES)[0][0]
    b = run_beam(step, step.state([0]), 1, 3, max_len=6)[0][0]
    assert g.tokens == [A, A, A, A, A, A] and not g.finished
    assert b.tokens == [B] and b.finished
    assert b.log_prob == pytest.approx(math.log(0.36))
    assert b.log_prob > g.log_prob


def test_batched_beam_equals_one_example_at_a_time():
    n, k = 7, 4
    step = random_markov(n, seed=3, eos_boost=0.5)
    batched = run_beam(step, step.state(range(n)), n, k, num_captions=3, alpha=0.7, max_len=9)
    for i in range(n):
        alone = run_beam(step, step.state([i]), 1, k, num_captions=3, alpha=0.7, max_len=9)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-5)


def test_n_best_is_sorted_distinct_and_scored_by_true_log_probs():
    step = random_markov(3, seed=5, eos_boost=1.5)
    for hyps in run_beam(step, step.state(range(3)), 3, 5, num_captions=5):
        assert len(hyps) == 5
        assert len({tuple(h.tokens) for h in hyps}) == 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
    # log_prob is the model's probability of tokens + EOS, recomputed here from the table
    hyps = run_beam(step, step.state([1]), 1, 5, num_captions=5)[0]
    for h in hyps:
        prev, total = BOS, 0.0
        for w in h.tokens + [EOS]:
            total += float(step.table[1, prev, w])
            prev = w
        assert h.log_prob == pytest.approx(total, abs=1e-5)


def test_finished_examples_leave_the_batch():
    # example 0 says A and ends, with certainty; example 1 runs long. Rows in flight must shrink.
    table = torch.full((2, V, V), float("-inf"))
    table[0, :, EOS] = 0.0
    table[0, BOS] = float("-inf")
    table[0, BOS, A] = 0.0
    table[1, :, A] = math.log(0.9)
    table[1, :, EOS] = math.log(0.1)
    seen = []

    def step(tokens, state):
        seen.append(len(tokens))
        return table[state["ex"], tokens], state

    out = run_beam(step, {"ex": torch.tensor([0, 1])}, 2, 2, max_len=6)
    assert out[0][0].tokens == [A] and out[0][0].finished
    # the first step once per example (its beams begin as copies), then 2 examples x 2 beams, then only
    # example 1's beams
    assert seen[:3] == [2, 4, 2] and seen[-1] == 2


def test_length_penalty_prefers_the_longer_caption():
    tree = Tree({(): {A: 0.55, B: 0.45}, (A,): {EOS: 1.0}, (B,): {C: 1.0}, (B, C): {C: 1.0}, (B, C, C): {EOS: 1.0}})
    plain = run_beam(tree, tree.state(1), 1, 2, alpha=0.0)[0][0]
    assert plain.tokens == [A]
    tree = Tree(tree.dists)
    penalised = run_beam(tree, tree.state(1), 1, 2, alpha=2.0)[0][0]
    assert penalised.tokens == [B, C, C]
    assert penalised.score == pytest.approx(math.log(0.45) / length_penalty(3, 2.0))


def test_min_len_forbids_early_end():
    tree = Tree({(): {A: 0.55, B: 0.45}, (A,): {EOS: 1.0}, (B,): {C: 1.0}, (B, C): {C: 1.0}, (B, C, C): {EOS: 1.0}})
    rules = Rules(eos_id=EOS, banned=(PAD, BOS), min_len=2)
    assert run_beam(tree, tree.state(1), 1, 2, rules=rules)[0][0].tokens == [B, C, C]
    step = random_markov(4, seed=9, eos_boost=3.0)
    for h in greedy(step, step.state(range(4)), 4, BOS, 10, Rules(EOS, 4, (PAD, BOS))):
        assert len(h[0].tokens) >= 4


def test_a_caption_does_not_end_on_a_word_it_may_not_end_with():
    # "A B" then EOS is the likeliest caption; B (think "with a") may not end one: "A B C" instead
    tree = Tree({(): {A: 1.0}, (A,): {B: 0.9, C: 0.1}, (A, B): {EOS: 0.8, C: 0.2}, (A, B, C): {EOS: 1.0},
                 (A, C): {EOS: 1.0}})
    no_end = torch.zeros(V, dtype=torch.bool)
    no_end[B] = True
    rules = Rules(eos_id=EOS, banned=(PAD, BOS), no_end=no_end)
    assert run_beam(tree, tree.state(1), 1, 2)[0][0].tokens == [A, B]
    for hyps in (run_beam(tree, tree.state(1), 1, 2, rules=rules), greedy(tree, tree.state(1), 1, BOS, 10, rules)):
        assert hyps[0][0].tokens == [A, B, C] and hyps[0][0].finished


def test_the_default_decoding_never_ends_on_an_article_or_preposition():
    from captioner.config import DecodeConfig
    from captioner.decoding import BAD_ENDINGS, rules_for
    from captioner.vocab import SPECIALS, Vocabulary

    vocab = Vocabulary(list(SPECIALS) + "a dog with the grass".split())
    rules = rules_for(DecodeConfig(), vocab)
    assert [vocab.itos[i] for i in rules.no_end.nonzero().flatten().tolist()] == ["a", "with", "the"]
    assert {"a", "an", "the", "with", "of", "on"} <= BAD_ENDINGS
    assert rules_for(DecodeConfig(no_bad_endings=False), vocab).no_end is None


def test_no_article_after_a_group_or_a_container_and_of():
    from captioner.config import DecodeConfig
    from captioner.decoding import rules_for
    from captioner.vocab import SPECIALS, Vocabulary

    vocab = Vocabulary(list(SPECIALS) + "a an group picture of dog dogs".split())
    a, group, picture, of, dog, dogs = (vocab.stoi[w] for w in "a group picture of dog dogs".split())
    # the model's own favourite is "a group of a dog" (self-critical training's "a group of a giraffe")
    tree = Tree({(): {a: 1.0}, (a,): {group: 0.9, picture: 0.1}, (a, group): {of: 1.0},
                 (a, group, of): {a: 0.8, dogs: 0.2}, (a, group, of, a): {dog: 1.0},
                 (a, picture): {of: 1.0}, (a, picture, of): {a: 1.0}, (a, picture, of, a): {dog: 1.0}},
                vocab_size=len(vocab))
    free = rules_for(DecodeConfig(no_article_after_collective=False), vocab)
    assert vocab.decode(run_beam(tree, tree.state(1), 1, 2, rules=free)[0][0].tokens) == "a group of a dog"
    rules = rules_for(DecodeConfig(), vocab)
    for hyps in (run_beam(tree, tree.state(1), 1, 2, rules=rules), greedy(tree, tree.state(1), 1, BOS, 10, rules)):
        assert vocab.decode(hyps[0][0].tokens) == "a group of dogs"
    # only after a collective noun and "of": "a picture of a dog" keeps its article
    seqs = torch.tensor([[a, picture, of], [a, group, of], [a, group, dog]])
    scores = rules.apply(torch.zeros(3, len(vocab)), seqs)
    assert torch.isinf(scores[:, [a, vocab.stoi["an"]]]).tolist() == [[False, False], [True, True], [False, False]]
    assert not torch.isinf(scores[:, dogs]).any()


def test_no_repeat_ngram_blocks_a_repeated_trigram():
    step = markov_from({BOS: {A: 1.0}, A: {B: 0.9, EOS: 0.1}, B: {C: 0.9, D: 0.05, EOS: 0.05},
                        C: {A: 0.8, D: 0.1, EOS: 0.1}, D: {EOS: 0.6, A: 0.4}})

    def trigrams(tokens):
        return [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]

    free = greedy(step, step.state([0]), 1, BOS, 8, RULES)[0][0].tokens
    assert len(trigrams(free)) > len(set(trigrams(free)))  # A B C A B C ...
    rules = Rules(eos_id=EOS, banned=(PAD, BOS), no_repeat_ngram_size=3)
    blocked = greedy(step, step.state([0]), 1, BOS, 8, rules)[0][0].tokens
    assert blocked[:5] == [A, B, C, A, B] and blocked[5:6] != [C]
    beams = run_beam(step, step.state([0]), 1, 4, max_len=8, rules=rules, num_captions=4)[0]
    for tokens in [blocked] + [h.tokens for h in beams]:
        assert len(trigrams(tokens)) == len(set(trigrams(tokens)))


def test_repetition_penalty_discourages_repeated_words():
    step = markov_from({BOS: {A: 1.0}, A: {A: 0.6, B: 0.4}, B: {EOS: 1.0}})
    assert greedy(step, step.state([0]), 1, BOS, 4, RULES)[0][0].tokens == [A, A, A, A]
    rules = Rules(eos_id=EOS, banned=(PAD, BOS), repetition_penalty=2.0)
    hyp = greedy(step, step.state([0]), 1, BOS, 4, rules)[0][0]
    assert hyp.tokens == [A, B]
    assert hyp.log_prob == pytest.approx(math.log(1.0 * 0.4 * 1.0))  # the true model probability


def test_max_len_fallback_returns_the_best_unfinished_beam():
    step = markov_from({BOS: {A: 0.7, B: 0.3}, A: {A: 0.5, B: 0.5}, B: {B: 0.9, A: 0.1}})  # EOS impossible
    hyps = run_beam(step, step.state([0]), 1, 3, max_len=5, num_captions=2)[0]
    assert len(hyps) == 2 and not any(h.finished for h in hyps)
    assert hyps[0].tokens == [A, B, B, B, B]  # 0.7 * 0.5 * 0.9^3 beats every other 5-word path
    assert hyps[0].log_prob == pytest.approx(math.log(0.7 * 0.5 * 0.9 ** 3))
    assert all(len(h.tokens) == 5 for h in hyps)


def test_suppressed_unk_is_never_emitted():
    step = markov_from({BOS: {UNK: 0.9, A: 0.1}, A: {EOS: 1.0}, UNK: {EOS: 1.0}})
    rules = Rules(eos_id=EOS, banned=(PAD, BOS, UNK))
    assert run_beam(step, step.state([0]), 1, 2, rules=rules)[0][0].tokens == [A]
    assert run_beam(step, step.state([0]), 1, 2)[0][0].tokens == [UNK]


def test_attention_is_returned_per_output_word():
    P = 3
    inner = random_markov(2, seed=2, eos_boost=1.0)

    def step(tokens, state):
        log_probs, _ = inner(tokens, state)
        alpha = torch.nn.functional.one_hot(tokens % P, P).float()  # attention = f(previous word)
        return log_probs, {**state, "alpha": alpha}

    for hyps in (greedy(step, inner.state([0, 1]), 2, BOS, 6, RULES),
                 run_beam(step, inner.state([0, 1]), 2, 3, max_len=6, num_captions=2)):
        for h in (h for hs in hyps for h in hs):
            assert h.attention.shape == (len(h.tokens), P)
            prev = ([BOS] + h.tokens)[: len(h.tokens)]
            assert h.attention.argmax(1).tolist() == [p % P for p in prev]


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    step = random_markov(3, seed=4, eos_boost=1.0)

    def draw(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return sample(step, step.state(range(3)), 3, 4, BOS, 10, RULES, generator=g, **kw)

    a, b = draw(0), draw(0)
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
    for hs in a:
        assert [h.log_prob for h in hs] == sorted((h.log_prob for h in hs), reverse=True)
    g = greedy(step, step.state(range(3)), 3, BOS, 10, RULES)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4}):
        for hs, gh in zip(draw(1, **kw), g):
            assert all(h.tokens == gh[0].tokens for h in hs), kw
    assert len({tuple(h.tokens) for hs in draw(2, temperature=3.0) for h in hs}) > 3


def test_hypothesis_fields_are_plain_python():
    step = random_markov(1, seed=0, eos_boost=2.0)
    h = run_beam(step, step.state([0]), 1, 2)[0][0]
    assert isinstance(h, Hypothesis) and isinstance(h.log_prob, float)
    assert all(isinstance(t, int) for t in h.tokens)


def test_beam_search_returns_a_hypothesis_even_when_every_continuation_is_banned():
    """Issue 13's defect: with every word banned (here all but EOS, and EOS before min_len), beam search used to
    return no hypothesis, and every caller indexes [0]."""
    from captioner.decoding import Rules, beam_search

    V, eos = 6, 2

    def step(tokens, state):
        return torch.log_softmax(torch.zeros(tokens.size(0), V), -1), state

    rules = Rules(eos_id=eos, min_len=3, banned=(0, 1, 3, 4, 5))
    hyps = beam_search(step, {"x": torch.zeros(2, 1)}, 2, 3, 1, 10, rules)
    assert [len(h) for h in hyps] == [1, 1]
    assert hyps[0][0].tokens == [] and not hyps[0][0].finished


def best_constrained(step, ex, meets, max_len, alpha):
    """By enumeration: the best caption of example `ex` that says a word of meets (V,), as
    constrained_beam_search ranks it: (log p - c) / lp(len) + c, c the log-prob of the first such word."""
    words = [w for w in range(V) if w not in RULES.banned and w != EOS]
    best = None
    for n in range(max_len):
        for seq in itertools.product(words, repeat=n):
            if not any(meets[w] for w in seq):
                continue
            prev, total, c = BOS, 0.0, None
            for w in (*seq, EOS):
                lp = float(step.table[ex, prev, w])
                total, prev = total + lp, w
                c = lp if c is None and w != EOS and meets[w] else c
            score = (total - c) / length_penalty(n, alpha) + c
            if best is None or score > best[0]:
                best = (score, list(seq), total)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_constrained_beam_search_with_wide_banks_finds_the_best_caption_that_says_the_word(alpha):
    n, max_len = 3, 4
    step = random_markov(n, seed=5, eos_boost=1.0)
    meets = torch.zeros(n, V, dtype=torch.bool)
    meets[0, C] = meets[1, A] = meets[1, D] = meets[2, B] = True  # example 1: either word will do
    out = constrained_beam_search(step, step.state(range(n)), n, 256, BOS, max_len, RULES, meets, alpha=alpha)
    for ex in range(n):
        score, tokens, log_prob = best_constrained(step, ex, meets[ex], max_len, alpha)
        assert out[ex][0].tokens == tokens and out[ex][0].finished
        assert out[ex][0].score == pytest.approx(score, abs=1e-5)
        assert out[ex][0].log_prob == pytest.approx(log_prob, abs=1e-5)  # the true log-prob, the word's included


def test_constrained_beam_search_always_says_the_word_batched_as_alone():
    n, k = 6, 3
    step = random_markov(n, seed=7, eos_boost=2.0)
    meets = torch.zeros(n, V, dtype=torch.bool)
    meets[torch.arange(n), torch.tensor([A, B, C, D, A, B])] = True
    free = run_beam(step, step.state(range(n)), n, k, max_len=9)
    batched = constrained_beam_search(step, step.state(range(n)), n, k, BOS, 9, RULES, meets, num_captions=2, alpha=0.5)
    assert any(not meets[i, f[0].tokens].any() for i, f in enumerate(free))  # the constraint changes something
    assert sum(h.finished for hs in batched for h in hs) >= n  # (one may run out of length: then unfinished)
    for i in range(n):
        assert len(batched[i]) == 2 and all(meets[i, h.tokens].any() for h in batched[i])
        alone = constrained_beam_search(step, step.state([i]), 1, k, BOS, 9, RULES, meets[i:i + 1], num_captions=2,
                                        alpha=0.5)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]


def test_constrained_beam_search_gives_nothing_where_the_word_cannot_be_said():
    step = random_markov(2, seed=2)
    meets = torch.zeros(2, V, dtype=torch.bool)
    meets[0, A] = meets[1, C] = True
    rules = Rules(eos_id=EOS, banned=(PAD, BOS, C))  # example 1's word is banned
    out = constrained_beam_search(step, step.state(range(2)), 2, 3, BOS, 6, rules, meets)
    assert out[0] and A in out[0][0].tokens
    assert out[1] == []
