"""Caption metrics, corpus-level, over the tokenization of vocab.tokenize (shared by references and hypotheses).

- BLEU-1..4 (Papineni et al., 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation") with
  nltk's corpus_bleu: uniform weights over 1..n-grams, clipped counts against all references, brevity penalty
  from the closest reference length (ties go to the shorter one), no smoothing.
- CIDEr-D (Vedantam, Zitnick & Parikh, 2015, "CIDEr: Consensus-based Image Description Evaluation"), written
  here to give exactly what coco-caption's cider_scorer.py gives (Chen et al., 2015, "Microsoft COCO Captions:
  Data Collection and Evaluation Server"); coco-caption's "CIDEr" *is* the D variant: Gaussian length penalty
  (sigma 6) and hypothesis tf-idf clipped by the reference's.
- ROUGE-L (Lin, 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"): LCS F-measure with beta 1.2,
  per image from the best precision and the best recall over its references, as coco-caption's rouge.py.
- METEOR 1.5 (Denkowski & Lavie, 2014, "Meteor Universal"), only through pycocoevalcap's Java jar; when that
  cannot run, the score is reported as {"unavailable": reason}, never as 0.

All of them score the same token lists; the coco-caption code paths are fed those tokens joined by spaces, so
its Java PTB tokenizer is never needed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import threading
import warnings
from collections import Counter
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu

from .vocab import tokenize

BLEU_WEIGHTS = {
    "BLEU-1": (1.0,),
    "BLEU-2": (0.5, 0.5),
    "BLEU-3": (1 / 3, 1 / 3, 1 / 3),
    "BLEU-4": (0.25, 0.25, 0.25, 0.25),
}
CIDER_N, CIDER_SIGMA = 4, 6.0
ROUGE_BETA = 1.2
METEOR_TIMEOUT_S = 600.0  # a whole COCO test set takes about a minute; beyond this the JVM is stuck

Tokens = list[str]


# --- input -------------------------------------------------------------------------------------------------

def _check_corpus(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses; "
                         "they must pair one to one")
    if not references:
        raise ValueError("no captions to score: 0 reference sets and 0 hypotheses")
    for i, refs in enumerate(references):
        if isinstance(refs, str):  # a flat list of strings would otherwise be read as lists of characters
            raise ValueError(f"references[{i}] is the string {refs!r}; it must be a list of reference captions")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] has 0 reference captions; each item needs at least one")


def _tokenize_corpus(references: Sequence[Sequence[str]],
                     hypotheses: Sequence[str]) -> tuple[list[list[Tokens]], list[Tokens]]:
    return [[tokenize(r) for r in refs] for refs in references], [tokenize(h) for h in hypotheses]


# --- BLEU --------------------------------------------------------------------------------------------------

def _bleu(refs: list[list[Tokens]], hyps: list[Tokens]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when an n-gram order has no match; the score is then 0
        return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in BLEU_WEIGHTS.items()}


def bleu_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """references[i]: all reference captions of item i (text); hypotheses[i]: one generated caption (text)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses")
    return _bleu(*_tokenize_corpus(references, hypotheses))


# --- CIDEr-D -----------------------------------------------------------------------------------------------

def _ngram_counts(tokens: Tokens, n: int = CIDER_N) -> Counter:
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _tfidf(counts: Counter, df: Counter, log_images: float, n: int = CIDER_N) -> tuple[list[dict], list[float]]:
    """Per n-gram order: {ngram: tf * idf} and its L2 norm. idf = log(#images) - log(max(1, df)), so an n-gram
    seen in no reference counts as if seen once, and one in every image's references weighs nothing."""
    vecs: list[dict] = [{} for _ in range(n)]
    for gram, tf in counts.items():
        vecs[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
    return vecs, [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]


def _cider_similarity(hyp: tuple[list[dict], list[float], int], ref: tuple[list[dict], list[float], int],
                      sigma: float) -> list[float]:
    """Clipped cosine per n-gram order times the Gaussian length penalty (the two changes that make CIDEr-D)."""
    (hyp_vecs, hyp_norms, hyp_len), (ref_vecs, ref_norms, ref_len) = hyp, ref
    # coco-caption measures length as the number of *bigrams*; it differs from the word count by the same 1 on
    # both sides, except for an empty caption, whose score is 0 either way, so words give identical results.
    penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2))
    sims = []
    for hyp_vec, ref_vec, hyp_norm, ref_norm in zip(hyp_vecs, ref_vecs, hyp_norms, ref_norms):
        # Clipping stops a hypothesis from gaining by repeating a reference n-gram; the norm stays unclipped.
        dot = sum(min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, w in hyp_vec.items())
        sims.append(dot / (hyp_norm * ref_norm) * penalty if hyp_norm and ref_norm else 0.0)
    return sims


class CiderD:
    """CIDEr-D of hypotheses against a fixed reference corpus refs[i] (one list of tokenized references per
    image): document frequencies and reference tf-idf vectors are computed once, so scoring many hypotheses
    (self-critical training scores thousands per epoch) costs only the hypotheses' own vectors."""

    def __init__(self, refs: list[list[Tokens]], n: int = CIDER_N, sigma: float = CIDER_SIGMA):
        self.n, self.sigma = n, sigma
        ref_counts = [[_ngram_counts(r, n) for r in rs] for rs in refs]
        self.df = Counter(g for counts in ref_counts for g in set().union(*counts))  # images whose refs hold it
        self.log_images = math.log(len(refs))
        self.refs = [[self._vector(r, c) for r, c in zip(rs, counts)] for rs, counts in zip(refs, ref_counts)]

    def _vector(self, tokens: Tokens, counts: Counter) -> tuple[list[dict], list[float], int]:
        return (*_tfidf(counts, self.df, self.log_images, self.n), len(tokens))

    def score(self, i: int, hyp: Tokens) -> float:
        """CIDEr-D of one tokenized hypothesis against image i's references."""
        hyp_vec = self._vector(hyp, _ngram_counts(hyp, self.n))
        per_order = [0.0] * self.n
        for ref_vec in self.refs[i]:
            per_order = [a + b for a, b in zip(per_order, _cider_similarity(hyp_vec, ref_vec, self.sigma))]
        return 10.0 * sum(per_order) / self.n / len(self.refs[i])  # mean over orders and references, x10


def cider_d_scores(refs: list[list[Tokens]], hyps: list[Tokens], n: int = CIDER_N,
                   sigma: float = CIDER_SIGMA) -> list[float]:
    """Per-image CIDEr-D of tokenized captions; document frequencies come from these references only, so the
    score depends on the evaluated set (and is 0 for a set of one image, where every idf is log 1 = 0)."""
    scorer = CiderD(refs, n, sigma)
    return [scorer.score(i, hyp) for i, hyp in enumerate(hyps)]


# --- ROUGE-L -----------------------------------------------------------------------------------------------

def _lcs_length(a: Tokens, b: Tokens) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l_scores(refs: list[list[Tokens]], hyps: list[Tokens], beta: float = ROUGE_BETA) -> list[float]:
    """Per-image ROUGE-L F of tokenized captions. Best precision and best recall may come from different
    references (coco-caption's choice, kept for comparability)."""
    scores = []
    for rs, hyp in zip(refs, hyps):
        lcs = [_lcs_length(r, hyp) for r in rs]
        precision = max(n / len(hyp) for n in lcs) if hyp else 0.0
        recall = max(n / len(r) if r else 0.0 for n, r in zip(lcs, rs))
        if precision == 0 or recall == 0:
            scores.append(0.0)
        else:
            scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision))
    return scores


# --- METEOR ------------------------------------------------------------------------------------------------

def meteor_unavailable_reason() -> str | None:
    """Why pycocoevalcap's METEOR cannot run here, or None when it can."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "pycocoevalcap is not installed (pip install pycocoevalcap)"
    if shutil.which("java") is None:
        return "java is not on PATH (METEOR 1.5 is a Java program)"
    jar = os.path.join(os.path.dirname(importlib.util.find_spec("pycocoevalcap.meteor.meteor").origin),
                       "meteor-1.5.jar")
    if not os.path.isfile(jar):
        return f"METEOR jar not found at {jar}"
    return None


def _run_meteor(refs: list[list[Tokens]], hyps: list[Tokens], timeout_s: float) -> float | dict:
    """pycocoevalcap's Meteor on space-joined tokens, killed after timeout_s. Its reads block with no timeout of
    their own, so a timer kills the JVM; the blocked read then returns and the failure is reported."""
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    meteor = Meteor()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        meteor.meteor_p.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (OSError, ValueError) as exc:  # a dead JVM: broken pipe, or an empty line where a number should be
        if expired.is_set():
            return {"unavailable": f"METEOR timed out after {timeout_s:g} s"}
        meteor.meteor_p.kill()
        stderr = meteor.meteor_p.stderr.read().decode(errors="replace").strip()
        return {"unavailable": f"METEOR (java) failed: {stderr[-300:] or exc!r}"}
    finally:
        timer.cancel()
        _stop_meteor(meteor)


def _stop_meteor(meteor) -> None:
    """End the JVM and close its pipes, which Meteor.__del__ leaves open."""
    if meteor.lock.locked():  # Meteor.__del__ takes this lock; left held, garbage collection would hang
        meteor.lock.release()
    proc = meteor.meteor_p
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):  # unflushed input to a dead JVM; Meteor.__del__ would raise it
            pipe.close()


def meteor_score(refs: list[list[Tokens]], hyps: list[Tokens],
                 timeout_s: float = METEOR_TIMEOUT_S) -> float | dict:
    """Corpus METEOR of tokenized captions, or {"unavailable": reason}; never a made-up 0."""
    reason = meteor_unavailable_reason()
    return {"unavailable": reason} if reason else _run_meteor(refs, hyps, timeout_s)


# --- all of them -------------------------------------------------------------------------------------------

def caption_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str], meteor: bool = True, *,
                    meteor_timeout_s: float = METEOR_TIMEOUT_S) -> dict:
    """BLEU-1..4, CIDEr-D, ROUGE-L and METEOR of hypotheses[i] (text) against references[i] (all reference
    texts of item i), all over one tokenization. METEOR is a float, or {"unavailable": reason} when it cannot
    run or `meteor` is False."""
    _check_corpus(references, hypotheses)
    refs, hyps = _tokenize_corpus(references, hypotheses)
    cider, rouge = cider_d_scores(refs, hyps), rouge_l_scores(refs, hyps)
    return {
        **_bleu(refs, hyps),
        "CIDEr-D": sum(cider) / len(cider),
        "ROUGE-L": sum(rouge) / len(rouge),
        "METEOR": meteor_score(refs, hyps, meteor_timeout_s) if meteor
        else {"unavailable": "not requested (meteor=False)"},
    }


# --- novel objects -------------------------------------------------------------------------------------------

def word_forms(word: str) -> frozenset[str]:
    """A noun and its plural ("bus" -> {"bus", "buses"}), the forms a caption mentions it by."""
    from .grammar import plural

    return frozenset({word, plural(word)})


def mention_f1(references: Sequence[Sequence[str]], hypotheses: Sequence[str], word: str) -> dict[str, float]:
    """The DCC protocol's score for one word (Hendricks et al., CVPR 2016, "Deep Compositional Captioning"):
    an image is a positive when any of its references mentions the word, a prediction when its generated
    caption does; F1 of predictions against positives (0 when there is no positive or no prediction)."""
    _check_corpus(references, hypotheses)
    forms = word_forms(word)
    gold = [any(forms & set(tokenize(r)) for r in refs) for refs in references]
    said = [bool(forms & set(tokenize(h))) for h in hypotheses]
    tp = sum(g and s for g, s in zip(gold, said))
    precision = tp / max(sum(said), 1)
    recall = tp / max(sum(gold), 1)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"F1": f1, "precision": precision, "recall": recall, "images_with_word": sum(gold),
            "captions_with_word": sum(said)}
