"""Caption metrics: cross-checked against coco-caption (pycocoevalcap) on real COCO references, hand-computed
CIDEr-D and ROUGE-L, edge cases, and both branches of METEOR."""
import json
import math
import re
import shutil
import sys
from collections import defaultdict

import pytest
from conftest import DATA

from captioner.metrics import (
    bleu_scores, caption_metrics, cider_d_scores, meteor_score, rouge_l_scores,
)
from captioner.vocab import tokenize

COCO_MINI_VAL = DATA / "coco-mini" / "annotations" / "captions_val2017.json"
N_IMAGES = 60


def _coco_mini_references() -> list[list[str]]:
    """All 5 captions of each of the first N_IMAGES annotated coco-mini val images (by image id)."""
    captions = defaultdict(list)
    for ann in sorted(json.loads(COCO_MINI_VAL.read_text())["annotations"], key=lambda a: a["id"]):
        captions[ann["image_id"]].append(ann["caption"])
    return [captions[i] for i in sorted(captions)[:N_IMAGES]]


def _hypothesis(refs: list[list[str]], i: int, short: bool = False) -> str:
    """A deterministic, plausible but imperfect caption for image i, so that scores land mid-range: another
    image's caption, the first two thirds of one of its own, or one of its own with two words swapped and the
    last dropped. `short` cuts some of the truncated ones to 3 words (shorter than a 4-gram)."""
    if i % 3 == 0:
        return refs[(i + 7) % len(refs)][0]
    if i % 3 == 1:
        words = refs[i][0].split()
        return " ".join(words[: 3 if short and i % 2 else max(4, 2 * len(words) // 3)])
    words = refs[i][1].split()
    words[1], words[2] = words[2], words[1]
    return " ".join(words[:-1])


@pytest.fixture(scope="module")
def corpus():
    """Text references and hypotheses, and the coco-caption inputs: our tokens joined by spaces, by image id."""
    refs = _coco_mini_references()
    hyps = [_hypothesis(refs, i) for i in range(len(refs))]
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hyps)}
    return refs, hyps, gts, res


@pytest.fixture(scope="module")
def ours(corpus):
    refs, hyps, _, _ = corpus
    return caption_metrics(refs, hyps, meteor=False)


# --- cross-checks against coco-caption ---------------------------------------------------------------------

def test_fixture_is_real_and_mid_range(corpus, ours):
    refs, hyps, _, _ = corpus
    assert len(refs) == N_IMAGES and all(len(rs) == 5 for rs in refs)
    assert all(h not in rs for h, rs in zip(hyps, refs))  # no hypothesis is a verbatim reference
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert 0.2 < ours[name] < 0.9, (name, ours[name])
    assert 0.3 < ours["CIDEr-D"] < 3.0


def test_cider_d_equals_coco_caption(corpus, ours):
    # pycocoevalcap's `Cider` is CIDEr-D, read from its cider_scorer.py (1.2): sigma=6.0 Gaussian penalty
    # `e**(-(delta**2)/(2*sigma**2))`, clipping `min(vec_hyp, vec_ref) * vec_ref` ("vrama91: added clipping"),
    # idf `log(#images) - log(max(1, df))` with df over the evaluated references, mean over n of per-reference
    # sums divided by #refs, x10. coco-caption reports it under the name "CIDEr".
    from pycocoevalcap.cider.cider import Cider

    _, _, gts, res = corpus
    theirs, per_image = Cider().compute_score(gts, res)
    assert ours["CIDEr-D"] == pytest.approx(float(theirs), abs=1e-6)
    mine = cider_d_scores([[r.split() for r in gts[i]] for i in gts], [res[i][0].split() for i in res])
    assert mine == pytest.approx([float(s) for s in per_image], abs=1e-6)


def test_rouge_l_equals_coco_caption(corpus, ours):
    from pycocoevalcap.rouge.rouge import Rouge

    _, _, gts, res = corpus
    theirs, per_image = Rouge().compute_score(gts, res)
    assert ours["ROUGE-L"] == pytest.approx(float(theirs), abs=1e-6)
    mine = rouge_l_scores([[r.split() for r in gts[i]] for i in gts], [res[i][0].split() for i in res])
    assert mine == pytest.approx([float(s) for s in per_image], abs=1e-6)


def _coco_bleu(gts, res) -> list[float]:
    from pycocoevalcap.bleu.bleu import Bleu

    return Bleu(4).compute_score(gts, res, verbose=0)[0]


def test_bleu_agrees_with_coco_caption_when_every_hypothesis_has_a_4gram(corpus, ours):
    # Measured here: |nltk - coco| <= 2.8e-12 for BLEU-1..4. Both clip counts by the max over references and
    # take the closest reference length with ties to the shorter one; coco adds 1e-15 to each match count and
    # 1e-9 to each n-gram total (and to the length ratio), which is all that is left.
    _, _, gts, res = corpus
    assert min(len(res[i][0].split()) for i in res) >= 4
    theirs = _coco_bleu(gts, res)
    for k in range(4):
        assert abs(ours[f"BLEU-{k + 1}"] - theirs[k]) <= 1e-9


def test_bleu_differs_from_coco_caption_only_by_nltk_counting_short_hypotheses():
    # nltk's modified_precision divides by max(1, #n-grams), so a hypothesis shorter than n adds 1 to the
    # corpus n-gram total where coco adds 0 (its guess is max(0, len - n + 1)). Measured here with ten 3-word
    # hypotheses: BLEU-1..3 still agree to 3e-12, BLEU-4 is 0.003068 lower under nltk. The ratio is exactly
    # (total / (total + #short)) ** (1/4), the 4-gram precision's weight.
    refs = _coco_mini_references()
    hyps = [_hypothesis(refs, i, short=True) for i in range(len(refs))]
    toks = [tokenize(h) for h in hyps]
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(t)] for i, t in enumerate(toks)}
    ours, theirs = bleu_scores(refs, hyps), _coco_bleu(gts, res)
    n_short = sum(len(t) < 4 for t in toks)
    four_grams = sum(max(0, len(t) - 3) for t in toks)
    assert n_short == 10
    for k in range(3):
        assert abs(ours[f"BLEU-{k + 1}"] - theirs[k]) <= 1e-9
    assert ours["BLEU-4"] < theirs[3] - 1e-3
    assert ours["BLEU-4"] / theirs[3] == pytest.approx((four_grams / (four_grams + n_short)) ** 0.25, rel=1e-9)


def test_bleu_no_4gram_match_is_zero_for_us_but_not_for_coco_caption():
    # coco's 1e-15 "tiny" keeps a zero 4-gram precision from zeroing BLEU-4; nltk (no smoothing) gives ~1e-77.
    refs = [["a dog runs on the grass"], ["a cat sleeps on a sofa"]]
    hyps = ["a dog on the grass", "the cat sleeps a sofa"]
    theirs = _coco_bleu({0: refs[0], 1: refs[1]}, {0: [hyps[0]], 1: [hyps[1]]})
    ours = bleu_scores(refs, hyps)
    assert ours["BLEU-4"] < 1e-70 < 1e-5 < theirs[3] < 1e-4
    assert ours["BLEU-3"] == pytest.approx(theirs[2], abs=1e-9)


def test_bleu_closest_reference_length_ties_go_to_the_shorter_in_both():
    # Hypothesis of 6 words, references of 5 and 7: the shorter (5) means no brevity penalty.
    refs, hyps = [["a b c d e", "a b c d e f x"]], ["a b c d e f"]
    assert bleu_scores(refs, hyps)["BLEU-1"] == 1.0
    assert _coco_bleu({0: refs[0]}, {0: hyps}) == pytest.approx([1.0] * 4, abs=1e-9)


# --- hand-computed -----------------------------------------------------------------------------------------

def test_cider_d_by_hand():
    # Two images, so idf = log 2 - log(max(1, df)): "a" is in both images' references (idf 0); every other
    # n-gram is in one image's references or none (idf L = log 2). Orders with no n-gram score 0.
    # Image 1, hypothesis "a cat sat":
    #   vs "a cat sat" (identical): cosine 1 for n = 1, 2, 3; n = 4 empty -> 0; same length  -> sum 3
    #   vs "a black cat": n=1 {a:0, cat:L, sat:L}.{a:0, black:L, cat:L} = L^2 / (L*sqrt2 * L*sqrt2) = 1/2;
    #     no shared bigram or trigram                                                         -> sum 1/2
    #   CIDEr-D = 10 * mean over n (4 orders) of the sum over refs / 2 refs = 10 * 3.5 / 4 / 2 = 4.375
    # Image 2, hypothesis "dog dog" vs "a dog ran": n=1 hyp {dog: 2L} clipped to L: L*L / (2L * L*sqrt2);
    #   "dog dog" is in no reference; length 2 vs 3 -> penalty exp(-1 / (2 * 6^2))
    #   CIDEr-D = 10 * (1 / (2 sqrt2)) / 4 * exp(-1/72)
    refs = [["A cat sat.", "a black cat"], ["a dog ran"]]
    hyps = ["a cat sat", "dog dog"]
    image2 = 10 * (1 / (2 * math.sqrt(2))) / 4 * math.exp(-1 / 72)
    per_image = cider_d_scores([[tokenize(r) for r in rs] for rs in refs], [tokenize(h) for h in hyps])
    assert per_image == pytest.approx([4.375, image2], abs=1e-12)
    assert caption_metrics(refs, hyps, meteor=False)["CIDEr-D"] == pytest.approx((4.375 + image2) / 2, abs=1e-12)


def _f(precision: float, recall: float, beta: float = 1.2) -> float:
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def test_rouge_l_by_hand():
    # Image 1: "a man rides a red bike" (6 words)
    #   vs "a man rides"                      LCS "a man rides"       = 3: P 3/6, R 3/3
    #   vs "a man rides a red bicycle today"  LCS "a man rides a red" = 5: P 5/6, R 5/7
    #   best P (5/6) and best R (1) come from different references, and are combined anyway.
    # Image 2: "two dogs play" vs "a dog plays with two dogs": LCS "two dogs" = 2: P 2/3, R 2/6.
    refs = [["A man rides.", "a man rides a red bicycle today"], ["a dog plays with two dogs"]]
    hyps = ["a man rides a red bike", "two dogs play"]
    expected = [_f(5 / 6, 1.0), _f(2 / 3, 2 / 6)]
    assert rouge_l_scores([[tokenize(r) for r in rs] for rs in refs], [tokenize(h) for h in hyps]) == \
        pytest.approx(expected, abs=1e-12)
    assert caption_metrics(refs, hyps, meteor=False)["ROUGE-L"] == pytest.approx(sum(expected) / 2, abs=1e-12)


# --- edge cases --------------------------------------------------------------------------------------------

def test_identical_hypothesis_and_references_score_one():
    refs = [["a man riding a wave on a surfboard"] * 2, ["two dogs playing with a frisbee in the park"] * 2]
    scores = caption_metrics(refs, [rs[0] for rs in refs], meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0) and scores["BLEU-1"] == pytest.approx(1.0)
    assert scores["ROUGE-L"] == pytest.approx(1.0)


def test_empty_hypothesis_scores_zero():
    refs = [["a cat on a mat", "a cat"], ["a dog in the park"]]
    scores = caption_metrics(refs, ["", "..."], meteor=False)  # "..." tokenizes to nothing too
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L"):
        assert scores[name] == 0.0, name
    one_empty = caption_metrics(refs, ["", "a dog in a park"], meteor=False)
    assert 0 < one_empty["ROUGE-L"] < 0.5 and 0 < one_empty["CIDEr-D"]


def test_one_image_cider_d_is_zero_by_definition():
    # idf = log(#images) - log(df) = log 1 - log 1 = 0 for every n-gram: coco-caption's CIDEr-D needs a set.
    assert caption_metrics([["a cat on a mat"]], ["a cat on a mat"], meteor=False)["CIDEr-D"] == 0.0


@pytest.mark.parametrize("refs, hyps, message", [
    ([["a cat"], ["a dog"]], ["a cat"], "2 reference sets but 1 hypotheses"),
    ([["a cat"]], ["a cat", "a dog"], "1 reference sets but 2 hypotheses"),
    ([], [], "0 reference sets and 0 hypotheses"),
    ([["a cat"], []], ["a cat", "a dog"], "references[1] has 0 reference captions"),
    (["a cat"], ["a cat"], "references[0] is the string 'a cat'"),
])
def test_bad_input_raises_naming_the_problem(refs, hyps, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        caption_metrics(refs, hyps, meteor=False)


def test_bleu_scores_keeps_its_contract():
    scores = bleu_scores([["a cat on a mat"]], ["a cat on a mat"])
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] and scores["BLEU-4"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 reference sets but 1 hypotheses"):
        bleu_scores([["a"], ["b"]], ["a"])


# --- METEOR ------------------------------------------------------------------------------------------------

def test_meteor_not_requested_is_unavailable_not_zero():
    assert caption_metrics([["a cat"]], ["a cat"], meteor=False)["METEOR"] == \
        {"unavailable": "not requested (meteor=False)"}


def test_meteor_unavailable_without_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    assert caption_metrics([["a cat"]], ["a cat"])["METEOR"] == \
        {"unavailable": "java is not on PATH (METEOR 1.5 is a Java program)"}


def test_meteor_unavailable_without_pycocoevalcap(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes find_spec report it missing
    assert "pycocoevalcap is not installed" in caption_metrics([["a cat"]], ["a cat"])["METEOR"]["unavailable"]


def test_meteor_reports_a_failing_java(monkeypatch, tmp_path):
    pytest.importorskip("pycocoevalcap")
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: no JVM today' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    result = meteor_score([[["a", "cat"]]], [["a", "cat"]], timeout_s=30)
    assert isinstance(result, dict) and "no JVM today" in result["unavailable"]


def test_meteor_timeout_kills_the_jvm_and_reports_it(monkeypatch, tmp_path):
    """A JVM that never answers (not a slow one: the outcome must not depend on this machine's speed) is killed
    when the timeout expires, and the score says so."""
    pytest.importorskip("pycocoevalcap")
    stuck = tmp_path / "java"
    stuck.write_text("#!/bin/sh\nexec sleep 600\n")
    stuck.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert meteor_score([[["a", "cat"]]], [["a", "cat"]], timeout_s=0.05) == \
        {"unavailable": "METEOR timed out after 0.05 s"}


def test_meteor_runs_or_says_why(corpus):
    refs, hyps, _, _ = corpus
    result = caption_metrics(refs, hyps)["METEOR"]
    if isinstance(result, dict):
        assert set(result) == {"unavailable"} and result["unavailable"]
        pytest.skip(f"METEOR unavailable here: {result['unavailable']}")
    # Measured here (Java 17, pycocoevalcap 1.2's meteor-1.5.jar): 0.2947 on this fixture.
    assert 0.0 < result < 1.0
    assert result == pytest.approx(0.2947, abs=0.01)
