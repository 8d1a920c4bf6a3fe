"""Offline tokenizer and the word vocabulary.

Tokenization (shared by training, decoding and the metrics):
  1. lowercase;
  2. split with NLTK's Treebank-style word tokenizer (`NLTKWordTokenizer`), which needs no downloaded
     data, unlike `nltk.word_tokenize` (it wants `punkt_tab`);
  3. drop tokens made only of punctuation (".", ",", "''", "--", ...), as Karpathy's COCO
     preprocessing and coco-caption's PTB tokenizer do; a word with inner punctuation survives
     ("t-shirt", "n't", "'s").
"""
from __future__ import annotations

import functools
import string
from collections import Counter
from typing import Iterable, Sequence

from .errors import CheckpointError
from .grammar import agree

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_PUNCT = set(string.punctuation) | {"``", "''", "--", "...", "…", "“", "”", "‘", "’"}


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens with punctuation-only tokens removed."""
    return [t for t in _tokenizer().tokenize(text.lower()) if not all(ch in _PUNCT for ch in t)]


@functools.cache
def _tokenizer():
    from nltk.tokenize import NLTKWordTokenizer  # importing nltk takes 0.8 s; captioning never tokenizes

    return NLTKWordTokenizer()


class Vocabulary:
    """Word <-> id map with PAD=0, BOS=1, EOS=2, UNK=3. The first `generated` words are the ones a decoder
    generates; words after them (a copy model's nouns, see copying.py) can only be copied. `nouns`: the words
    a copy model may copy (its noun table's), which decoding puts in the plural after a number word."""

    def __init__(self, words: Sequence[str], generated: int | None = None, nouns: Iterable[str] = ()):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}
        self.generated = len(words) if generated is None else generated
        if not len(SPECIALS) <= self.generated <= len(words):
            raise ValueError(f"generated must be in {len(SPECIALS)}..{len(words)}, got {generated}")
        self.nouns = frozenset(nouns)

    def extend(self, nouns: Iterable[str]) -> "Vocabulary":
        """This vocabulary plus the given nouns it lacks, appended as copy-only words; all of them become
        `nouns`."""
        nouns = list(dict.fromkeys(nouns))
        extra = [w for w in nouns if w not in self.stoi]
        return Vocabulary(self.itos + extra, generated=self.generated, nouns=self.nouns | set(nouns))

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 5, max_size: int = 10000) -> "Vocabulary":
        """Words seen at least `min_freq` times, most frequent first (ties alphabetical), at most `max_size` words
        besides the four specials."""
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        kept = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept[:max_size])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """BOS, word ids (UNK for unknown words; at most `max_len` words), EOS."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(text)]
        if max_len is not None:
            ids = ids[:max_len]
        return [self.bos_id] + ids + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids, stopping at the first EOS and skipping PAD/BOS; articles and plurals made to agree
        (grammar.py: a copied noun comes with no learned "an" or plural)."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(agree(words, self.nouns))

    def to_dict(self) -> dict:
        out = {"itos": list(self.itos), "generated": self.generated}
        if self.nouns:
            out["nouns"] = sorted(self.nouns)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        try:
            return cls(data["itos"], data.get("generated"), data.get("nouns") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint vocabulary is malformed: {exc}") from None
