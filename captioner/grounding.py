"""Is the caption about what is in the photo? Four rates beside BLEU, for photos from outside the training data.

- subject named: the share of captions that name the photo's main subject. The subject is given per item
  (`objects` of a jsonl row: any one of those words, singular or plural, counts); without it (COCO), it is the
  object nouns that most of the item's references agree on (at least half of them mention it), and items on
  which they agree on none are left out.
- person hallucination: of the items whose references mention no person, the share whose caption does
  (the prior a decoder learns from COCO's person-heavy photos: "a man holding ...").
- repetition: the share of captions that say a content word twice ("a cat laying on top of a cat").
  The same rate over the references is reported beside it: what humans do.
- object hallucination: the share of captions that name an object no reference (and no `objects` word)
  mentions; CHAIR-s of Rohrbach et al. (EMNLP 2018, "Object Hallucination in Image Captioning"), matched
  on exact words and their plurals, without CHAIR's synonym lists, so it over-counts synonyms (a "puppy"
  that the references call a "dog").

Words are matched as whole tokens of vocab.tokenize ("cat" is not found in "category"); the object words are
COCO's 80 categories with their common names and the ImageNet noun table's words (nouns.py).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Container, Sequence

from .grammar import FUNCTION_WORDS
from .vocab import tokenize

PERSON_WORDS = frozenset("""
man men woman women person persons people boy boys girl girls child children kid kids guy guys lady ladies
gentleman gentlemen baby babies toddler toddlers player players skier skiers surfer surfers skateboarder
skateboarders snowboarder snowboarders rider riders biker bikers cyclist cyclists someone crowd teenager
teenagers adult adults mother father son daughter husband wife bride groom chef cook worker workers
officer officers policeman soldier soldiers student students tourist tourists pedestrian pedestrians
male males female females human humans individual individuals boyfriend girlfriend grandmother grandfather
motorcyclist motorcyclists athlete athletes spectator spectators passenger passengers driver drivers vendor
vendors customer customers shopper shoppers batter catcher pitcher umpire umpires hiker hikers swimmer swimmers
""".split())

# COCO's 80 categories by the words captions use for them (multi-word names as token pairs).
COCO_OBJECTS = tuple(w for w in """
person bicycle bike car motorcycle motorbike airplane plane jet bus train truck boat ship traffic_light
fire_hydrant hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe
backpack umbrella handbag purse tie suitcase luggage frisbee skis snowboard kite baseball_bat bat
baseball_glove glove skateboard surfboard tennis_racket racket bottle wine_glass glass cup fork knife spoon
bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut doughnut cake chair couch sofa
potted_plant plant bed dining_table table toilet tv television laptop computer mouse remote keyboard
cell_phone phone microwave oven toaster sink refrigerator fridge book clock vase scissors teddy_bear
hair_drier hair_dryer toothbrush
""".split())


@lru_cache(maxsize=8192)  # decoding asks for the same nouns' forms for every photo (inflect: ~20 us a call)
def noun_forms(word: str) -> tuple[str, ...]:
    """A noun and its plural ("hot_dog", "hot_dogs"). Matching goes this way round because singularizing is
    unreliable on words that end in s (inflect turns "bus" into "bu")."""
    from .grammar import plural

    word = word.lower().strip().replace(" ", "_")
    return (word, plural(word.replace("_", " ")).replace(" ", "_"))


@lru_cache(maxsize=None)
def _canonical() -> dict[str, str]:
    """Every form of every object noun -> its singular (multi-word ones joined by '_')."""
    from .nouns import default_nouns

    nouns = {w.replace(" ", "_") for w in default_nouns().words} | set(COCO_OBJECTS)
    return {form: w for w in sorted(nouns - PERSON_WORDS) for form in noun_forms(w)}


def _terms(tokens: Sequence[str]) -> set[str]:
    """A caption's words and word pairs ('hot_dog')."""
    return set(tokens) | {f"{a}_{b}" for a, b in zip(tokens, tokens[1:])}


def names_any(tokens: Sequence[str], words: Sequence[str]) -> bool:
    """Whether the tokens name any of `words` (whole words, singular or plural; 'hot dog' as two tokens)."""
    terms = _terms(tokens)
    return any(form in terms for w in words if w.strip() for form in noun_forms(w))


def could_name(words: Sequence[str], known: Container[str]) -> bool:
    """Whether a caption of `known` words could name any of `words` as names_any matches them: a form of one
    word, or of two as a word pair, every word of it known."""
    forms = (f.split("_") for w in words if w.strip() for f in noun_forms(w))
    return any(len(parts) <= 2 and all(p in known for p in parts) for parts in forms)


def mentions_person(tokens: Sequence[str]) -> bool:
    return any(t in PERSON_WORDS for t in tokens)


def repeated_content_words(tokens: Sequence[str]) -> int:
    """How many content words (not FUNCTION_WORDS; plurals counted as their noun) are said again."""
    canonical = _canonical()
    content = [canonical.get(t, t) for t in tokens if t not in FUNCTION_WORDS and t.isalpha()]
    return len(content) - len(set(content))


def repeats_content_word(tokens: Sequence[str]) -> bool:
    return repeated_content_words(tokens) > 0


def mentioned_objects(tokens: Sequence[str]) -> set[str]:
    """The object nouns (singular) the tokens name."""
    canonical = _canonical()
    return {canonical[t] for t in _terms(tokens) if t in canonical}


def agreed_subjects(references: Sequence[Sequence[str]]) -> list[str]:
    """Object nouns at least half of the (tokenized) references mention."""
    counts: dict[str, int] = {}
    for ref in references:
        for w in mentioned_objects(ref):
            counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, n in counts.items() if 2 * n >= len(references))


def grounding_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str],
                      objects: Sequence[Sequence[str]] | None = None) -> dict:
    """The four rates above (fractions in [0, 1], with the counts they come from) for captions `hypotheses`
    against `references` (per item, its reference captions as text) and, optionally, per item the words
    naming its main subject (`objects`; empty for an item means: use the references' agreed nouns)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses")
    named = subject_items = person_free = person_said = repeats = ref_repeats = ref_count = hallucinated = 0
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        ref_tokens = [tokenize(r) for r in refs]
        tokens = tokenize(hyp)
        given = list(objects[i]) if objects is not None and objects[i] else []
        subject = given or agreed_subjects(ref_tokens)
        if subject:
            subject_items += 1
            named += names_any(tokens, subject)
        if not any(mentions_person(r) for r in ref_tokens):
            person_free += 1
            person_said += mentions_person(tokens)
        repeats += repeats_content_word(tokens)
        ref_repeats += sum(repeats_content_word(r) for r in ref_tokens)
        ref_count += len(ref_tokens)
        known = set().union(*(mentioned_objects(r) for r in ref_tokens)) | mentioned_objects(
            [t for w in given for t in tokenize(w)])
        hallucinated += bool(mentioned_objects(tokens) - known)
    n = len(hypotheses)

    def rate(k: int, of: int) -> float | None:
        return round(k / of, 4) if of else None

    return {
        "subject_named": rate(named, subject_items), "subject_items": subject_items,
        "subject_from": "objects" if objects is not None and any(objects) else "references' agreed nouns",
        "person_hallucination": rate(person_said, person_free), "person_free_items": person_free,
        "repetition": rate(repeats, n), "reference_repetition": rate(ref_repeats, ref_count),
        "object_hallucination": rate(hallucinated, n), "items": n,
    }


GROUNDING_ORDER = (("subject_named", "subject named"), ("person_hallucination", "person where none"),
                   ("repetition", "repeats a word"), ("object_hallucination", "object hallucination"))


def format_grounding(g: dict) -> str:
    """One line: the four rates with their counts."""
    parts = []
    for key, name in GROUNDING_ORDER:
        value = g.get(key)
        parts.append(f"{name} {'n/a' if value is None else f'{value:.1%}'}")
    return (", ".join(parts) + f" (subject over {g['subject_items']} items from {g['subject_from']}; "
            f"person-free items {g['person_free_items']}; references repeat a word in "
            f"{0 if g['reference_repetition'] is None else g['reference_repetition']:.1%})")
