"""Article and number agreement for generated captions, with `inflect`.

A decoder that copies a noun it never generated from training captions (copying.py) cannot have learned its
article or plural: it writes "a umbrella" or "two dog". Captions are fixed word by word: "a"/"an" before a
word takes the form inflect gives for it ("an umbrella", "a university", "an hour"), and a singular noun of the
model's noun table right after a number word becomes plural ("two dogs", "three mice").
"""
from __future__ import annotations

from functools import lru_cache
from typing import Container

NUMBER_WORDS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many",
                "multiple", "numerous", "few"}


@lru_cache(maxsize=None)
def _engine():
    # inflect wraps its functions in typeguard's @typechecked, which re-parses and instruments inflect's source
    # at import: 3-5 s, the whole "first caption is slow" warm-up of the CLI. Its run-time argument checks are
    # of no use to us (we pass plain words), so inflect is imported with the decorator as a no-op (what
    # `python -O` does); typeguard's own behaviour elsewhere is restored at once.
    import sys

    if "inflect" not in sys.modules:
        import typeguard

        checked = typeguard.typechecked
        typeguard.typechecked = lambda target=None, **_: target if target is not None else (lambda f: f)
        try:
            import inflect
        finally:
            typeguard.typechecked = checked
    import inflect

    return inflect.engine()


@lru_cache(maxsize=4096)
def _article(word: str) -> str:
    return _engine().a(word).split(" ", 1)[0]


def plural(noun: str) -> str:
    return _engine().plural_noun(noun) or noun


def agree(words: list[str], nouns: Container[str] = frozenset()) -> list[str]:
    """Fix "a"/"an" before every word, and pluralize one of `nouns` (a copy model's, which it cannot have
    learned the plural of) right after a number word."""
    out = list(words)
    for i in range(len(out) - 1):
        nxt = out[i + 1]
        if out[i] in ("a", "an") and nxt[:1].isalpha():
            out[i] = _article(nxt)
        elif out[i] in NUMBER_WORDS and nxt in nouns:
            out[i + 1] = plural(nxt)
    return out
