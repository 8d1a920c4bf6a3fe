"""What the CNN sees: its ImageNet classifier's 1000 classes mapped to everyday caption nouns.

Our captions come from 2,266 COCO photos, so a decoder alone only knows COCO's words. The pretrained CNN
recognises 1000 ImageNet classes, and `imagenet_nouns.tsv` (made by scripts/make_imagenet_nouns.py from
WordNet 3.0, every row reviewed by hand) names each with 1-3 caption words, the first canonical:
all dog breeds -> dog, Granny Smith -> apple, fox squirrel -> squirrel, espresso -> coffee.

Per image, a noun's probability is the sum of the probabilities of the classes that list it (copy models trained
with `--noun-classes n` count only the classifier's n most probable classes: `strongest_classes`); the most probable
nouns are the image's candidates, each with a visual embedding (the mean of its classes' classifier weight
rows), so a word never seen in a training caption still has a vector. This is the input of novel object
captioning (LSTM-C, Yao et al., CVPR 2017; LSTM-P, Li et al., CVPR 2019).

Shapes: B batch, C classes (1000), N nouns, E feature.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_nouns.tsv")


@lru_cache(maxsize=None)
def load_table(path: str = TABLE_PATH) -> tuple[tuple[str, ...], ...]:
    """The table's rows in class order: per class, its caption words (canonical first)."""
    rows: dict[int, tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or line.startswith("index\t") or not line.strip():
                continue
            index, _wnid, _name, words = line.rstrip("\n").split("\t")
            rows[int(index)] = tuple(words.split("|"))
    return tuple(rows[i] for i in range(len(rows)))


@dataclass(frozen=True)
class Candidate:
    word: str
    prob: float  # summed probability of the ImageNet classes that the word names


def strongest_classes(class_probs: torch.Tensor, n: int) -> torch.Tensor:
    """class_probs (B,C) with all but each row's n most probable classes set to 0 (n = 0: unchanged). A softmax
    classifier leaves every class a floor (about 0.0004 each for EfficientNet-Lite2 on a photo it has no class
    for), and a noun named by many classes sums it: the 120 dog breeds read as "dog 0.05-0.16" on photos of
    bridges, robins and sunflowers, where no breed reaches 0.006. A class outside the top n is no evidence."""
    if n <= 0 or n >= class_probs.size(-1):
        return class_probs
    top_p, top_i = class_probs.topk(n, dim=-1)  # (B,n)
    return torch.zeros_like(class_probs).scatter(-1, top_i, top_p)


class NounSpace:
    """The table's one-word nouns (multi-word names like "teddy bear" stay out: a caption token is one word),
    with which classes name each: membership (C,N)."""

    def __init__(self, table: tuple[tuple[str, ...], ...] | list[list[str]]):
        self.table = tuple(tuple(row) for row in table)  # the rows it was built from (a copy model saves them)
        words: dict[str, int] = {}
        for row in table:
            for w in row:
                if " " not in w:
                    words.setdefault(w, len(words))
        self.words = list(words)
        self.index = words
        self.membership = torch.zeros(len(table), len(words))  # (C,N)
        for c, row in enumerate(table):
            for w in row:
                if w in words:
                    self.membership[c, words[w]] = 1.0

    def noun_probs(self, class_probs: torch.Tensor, top_classes: int = 0) -> torch.Tensor:
        """class_probs (B,C) -> noun probabilities (B,N): the sum of the noun's classes, counting only the
        classifier's `top_classes` most probable ones (0 = all; see `strongest_classes`)."""
        kept = strongest_classes(class_probs, top_classes)
        return kept @ self.membership.to(kept.device, kept.dtype)

    def visual_embeddings(self, head_weight: torch.Tensor) -> torch.Tensor:
        """The classifier's weight rows (C,E) -> one vector per noun (N,E): the mean over its classes."""
        m = self.membership.to(head_weight.device, head_weight.dtype)  # (C,N)
        return (m.t() @ head_weight) / m.sum(0).clamp(min=1.0).unsqueeze(1)

    def candidates(self, class_probs: torch.Tensor, k: int = 5, threshold: float = 0.05, top_classes: int = 0,
                   guesses: int = 5) -> list[list[Candidate]]:
        """Per image, up to k nouns with probability >= threshold, most probable first: what the CNN sees, as
        the decoder reads it (`top_classes` as the model counts them). Only nouns one of whose classes is among
        the classifier's `guesses` most probable (its top-5, ImageNet's own measure; 0 = any) are listed: the
        floor a noun of many classes sums is not something the CNN sees ("dog 0.16" on a skiing video)."""
        noun_p = self.noun_probs(class_probs, top_classes)  # (B,N)
        if guesses:  # a softmax gives every class some probability, so > 0 means a class among the guesses
            noun_p = noun_p.masked_fill(self.noun_probs(class_probs, guesses) <= 0, 0.0)
        probs, idx = noun_p.topk(min(k, len(self.words)), dim=1)  # (B,k)
        return [[Candidate(self.words[i], round(float(p), 4)) for p, i in zip(ps, ids) if p >= threshold]
                for ps, ids in zip(probs.tolist(), idx.tolist())]


@lru_cache(maxsize=None)
def default_nouns() -> NounSpace:
    return NounSpace(load_table())
