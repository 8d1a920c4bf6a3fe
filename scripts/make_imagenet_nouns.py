"""Generate captioner/imagenet_nouns.tsv: for each of the 1000 ImageNet classes, 1-3 everyday caption words.

    apt-get install -y wordnet-base wordnet-sense-index     # WordNet 3.0, read offline
    pip install wordfreq                                    # offline word frequencies
    python scripts/make_imagenet_nouns.py [--out captioner/imagenet_nouns.tsv] [--review]

An ImageNet class id nXXXXXXXX is a WordNet 3.0 noun offset (the class index -> id list comes from timm).
Candidates are the lemmas of the class's synset and of its hypernyms, nearest first. The canonical word is
the nearest *basic-level* one: a common (wordfreq Zipf >= 4.2), short (at most two words) lemma; a Chihuahua
becomes "dog", a Granny Smith "apple", a fox squirrel "squirrel". Up to two alternatives follow: other common
lemmas of the same synset and the specific name itself when it is common enough for a caption. Then the
hand-reviewed corrections in OVERRIDES replace the rows that this rule gets wrong (WordNet's hypernyms are a
taxonomy, not how people caption photos: a "tabby" is a cat, not a "domestic cat"; a "jeep" a car). The
result is committed; tests pin a few dozen rows.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDNET = "/usr/share/wordnet"
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive
noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation
noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication
verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception
verb.possession verb.social verb.stative verb.weather adj.ppl""".split()
COMMON = 3.6  # Zipf frequency (log10 per billion words): "dog" 5.4, "squirrel" 3.9, "chihuahua" 2.9
MAX_DEPTH = 5  # hypernym steps searched for a basic-level word
# Taxonomy words nobody captions with: the search stops below them.
TOO_GENERAL = set("""animal beast organism being vertebrate invertebrate mammal placental carnivore creature fauna
object whole artifact artefact instrumentality device container covering commodity structure equipment implement
conveyance matter substance thing unit part entity abstraction system solid material product mechanism
arthropod mollusk chordate craniate aquatic primate ungulate rodent game toy working hunting gun guard food
plant vascular herb tree shrub fungus natural phenomenon geological formation""".split())
sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagenet_noun_overrides import OVERRIDES  # noqa: E402


def wordnet_reader():
    """NLTK's WordNet reader over Debian's WordNet 3.0 files (it also wants the 45-line `lexnames`)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if not os.path.isfile(os.path.join(WORDNET, "data.noun")):
        sys.exit(f"WordNet 3.0 not found in {WORDNET}: apt-get install -y wordnet-base wordnet-sense-index")
    data = tempfile.mkdtemp(prefix="nltk-data-")
    nltk.data.path.insert(0, data)  # NLTK reads corpora only from under its data path (NLTK_DATA)
    folder = os.path.join(data, "corpora", "wordnet")
    os.makedirs(folder)
    for name in os.listdir(WORDNET):  # copied: NLTK refuses symlinks that leave its data folder
        if os.path.isfile(os.path.join(WORDNET, name)):
            shutil.copy(os.path.join(WORDNET, name), folder)
    with open(os.path.join(folder, "lexnames"), "w") as f:
        f.writelines(f"{i:02d}\t{name}\t{1 if name.startswith('noun') else 2 if name.startswith('verb') else 3}\n"
                     for i, name in enumerate(LEXNAMES))
    return WordNetCorpusReader(folder, None)


def candidates(synset) -> list[str]:
    """Lemmas of a synset and their head nouns (the last word: "toy dog" -> "dog", "tabby cat" -> "cat")."""
    out = []
    for lemma in synset.lemmas():
        name = lemma.name().replace("_", " ").lower()
        out += [name, name.split()[-1]] if " " in name else [name]
    return list(dict.fromkeys(out))


def chain(synset, depth: int = MAX_DEPTH) -> list:
    """The synset and its first hypernyms, nearest first, up to a too-general one."""
    out = [synset]
    while len(out) <= depth and out[-1].hypernyms():
        # by name: NLTK keeps a synset's pointers in a set, so its own order changes with PYTHONHASHSEED
        parent = min(out[-1].hypernyms(), key=lambda s: s.name())
        if set(candidates(parent)) & TOO_GENERAL:
            break
        out.append(parent)
    return out


def choose(synset, zipf) -> list[str]:
    """1-3 caption words for one class, canonical first: the nearest synset with a common short word gives
    its most frequent one; then its other common words and the class's own name if people use it."""
    def ok(w: str) -> bool:
        return len(w.split()) <= 2 and w not in TOO_GENERAL and zipf(w) >= COMMON

    for level in chain(synset):
        common = sorted((w for w in candidates(level) if ok(w)), key=lambda w: -zipf(w))
        if common:
            own = [w for w in candidates(synset) if len(w.split()) <= 2 and zipf(w) >= 3.0 and w not in TOO_GENERAL]
            return list(dict.fromkeys([common[0], *common[1:2], *own[:1]]))[:3]
    return [candidates(synset)[0]]


def build_rows() -> list[tuple[int, str, str, list[str]]]:
    from timm.data import ImageNetInfo
    from wordfreq import zipf_frequency

    wn = wordnet_reader()
    info = ImageNetInfo()
    zipf = lambda w: zipf_frequency(w, "en")  # noqa: E731
    rows = []
    for index, wnid in enumerate(info.label_names()):
        synset = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
        words = OVERRIDES.get(index) or choose(synset, zipf)
        rows.append((index, wnid, info.index_to_description(index).split(",")[0], words))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "captioner" / "imagenet_nouns.tsv"))
    ap.add_argument("--review", action="store_true", help="print the rows the rule chose (not overridden)")
    args = ap.parse_args()
    rows = build_rows()
    if args.review:
        for index, wnid, name, words in rows:
            if index not in OVERRIDES:
                print(f"{index}\t{name}\t{', '.join(words)}")
        return
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("# ImageNet class -> everyday caption words (first canonical). scripts/make_imagenet_nouns.py\n")
        f.write("index\twnid\tclass\twords\n")
        for index, wnid, name, words in rows:
            f.write(f"{index}\t{wnid}\t{name}\t{'|'.join(words)}\n")
    print(f"wrote {args.out}: {len(rows)} classes, {len({w[0] for *_, w in rows})} distinct canonical words, "
          f"{len(OVERRIDES)} rows set by hand")


if __name__ == "__main__":
    main()
