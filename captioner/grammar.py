"""Article and number agreement for generated captions, with `inflect`.

A decoder that copies a noun it never generated from training captions (copying.py) cannot have learned its
article or plural: it writes "a umbrella" or "two dog". Captions are fixed word by word: "a"/"an" before a
word takes the form inflect gives for it ("an umbrella", "a university", "an hour"), and a singular noun of the
model's noun table right after a number word, or after a group's noun and "of", becomes plural ("two dogs",
"three mice", "a group of wolves").
"""
from __future__ import annotations

from functools import lru_cache
from typing import Container

# Words that carry no content of their own; any other word said twice is a repetition (grounding.py).
FUNCTION_WORDS = frozenset("""
a an the and or but of in on at to for with from by into onto over under near next up down out off
is are was were be been being has have had do does it its it's this that these those there their they
them his her he she him some two three four several many one other each another very while as
's n't top front side back middle
""".split())
NUMBER_WORDS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many",
                "multiple", "numerous", "few"}
# Nouns for a group of countable things: "a herd of" takes a plural ("a herd of zebras"). Not "bunch", "pile",
# "stack": "a pile of snow", "a bunch of broccoli" take a mass noun as well.
GROUP_WORDS = frozenset("group groups herd herds flock flocks crowd crowds couple pair pairs number row rows pack "
                        "packs fleet".split())
# Nouns that are plural already, which inflect pluralizes again ("cattles")
PLURAL_ALREADY = frozenset("cattle livestock poultry police people".split())


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
    return noun if noun in PLURAL_ALREADY else _engine().plural_noun(noun) or noun


def _is_head(words: list[str], i: int) -> bool:
    """Whether words[i] ends its noun phrase: the caption ends, or a function word or an -ing verb follows
    ("a group of baseball players": "baseball" is not the head, and stays singular)."""
    return i + 1 == len(words) or words[i + 1] in FUNCTION_WORDS or words[i + 1].endswith("ing")


def agree(words: list[str], nouns: Container[str] = frozenset()) -> list[str]:
    """Fix "a"/"an" before every word, and pluralize one of `nouns` (a copy model's, which it cannot have
    learned the plural of) right after a number word or a group's noun and "of", where it is the head of its
    noun phrase."""
    out = list(words)
    for i in range(len(out) - 1):
        nxt = out[i + 1]
        if out[i] in ("a", "an") and nxt[:1].isalpha():
            out[i] = _article(nxt)
        elif (out[i] in NUMBER_WORDS or (out[i] == "of" and i and out[i - 1] in GROUP_WORDS)) and nxt in nouns \
                and _is_head(out, i + 1):
            out[i + 1] = plural(nxt)
    return out
