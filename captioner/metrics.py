"""Caption metrics, corpus-level, over the tokenization of vocab.tokenize (shared by references and hypotheses).

BLEU-1..4 (Papineni et al., 2002) with nltk's corpus_bleu: uniform weights over 1..n-grams, clipped counts
against all references, brevity penalty from the closest reference length, no smoothing (as coco-caption).
"""
from __future__ import annotations

import warnings
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu

from .vocab import tokenize

BLEU_WEIGHTS = {
    "BLEU-1": (1.0,),
    "BLEU-2": (0.5, 0.5),
    "BLEU-3": (1 / 3, 1 / 3, 1 / 3),
    "BLEU-4": (0.25, 0.25, 0.25, 0.25),
}


def bleu_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """references[i]: all reference captions of item i (text); hypotheses[i]: one generated caption (text)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses")
    refs = [[tokenize(r) for r in rs] for rs in references]
    hyps = [tokenize(h) for h in hypotheses]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when an n-gram order has no match; the score is then 0
        return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}
