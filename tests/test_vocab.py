"""Tokenizer and Vocabulary: offline tokenization, build rules, encode/decode, serialisation."""
import subprocess
import sys

import pytest

from captioner.errors import CheckpointError
from captioner.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocabulary, tokenize


# --- tokenize ---------------------------------------------------------------------------------------------

def test_tokenize_lowercases_and_drops_punctuation_only_tokens():
    assert tokenize('A Dog, running; FAST?!') == ["a", "dog", "running", "fast"]
    assert tokenize('He said "hello" -- then left...') == ["he", "said", "hello", "then", "left"]


def test_tokenize_keeps_words_with_inner_punctuation():
    assert tokenize("A man's T-shirt.") == ["a", "man", "'s", "t-shirt"]
    assert tokenize("Don't stop") == ["do", "n't", "stop"]
    assert tokenize("e-mail 3.5 U.S. cats") == ["e-mail", "3.5", "u.s.", "cats"]


def test_tokenize_empty_and_punctuation_only_text():
    assert tokenize("") == []
    assert tokenize("   ") == []
    assert tokenize(". , ... -- ?!") == []


def test_tokenize_needs_no_nltk_data(monkeypatch):
    # Point nltk's data search at nothing: the tokenizer must still work (nltk.word_tokenize would fail).
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    assert tokenize("Two cats sleep on a sofa.") == ["two", "cats", "sleep", "on", "a", "sofa"]


# --- build ------------------------------------------------------------------------------------------------

CAPTIONS = [
    "a dog runs on the grass",
    "a dog plays with a ball",
    "the cat sleeps",
    "a cat and a dog",
]
# counts: a=5, dog=3, cat=2, the=2, and/ball/grass/on/plays/runs/sleeps/with=1


def test_specials_have_ids_0_to_3():
    vocab = Vocabulary.build(CAPTIONS, min_freq=1)
    assert vocab.itos[:4] == [PAD, BOS, EOS, UNK] == list(SPECIALS)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert [vocab.stoi[s] for s in SPECIALS] == [0, 1, 2, 3]


def test_build_min_freq_orders_by_frequency_then_alphabetically():
    vocab = Vocabulary.build(CAPTIONS, min_freq=2)
    assert vocab.itos == [PAD, BOS, EOS, UNK, "a", "dog", "cat", "the"]
    assert len(vocab) == 8


def test_build_min_freq_one_keeps_every_word():
    vocab = Vocabulary.build(CAPTIONS, min_freq=1)
    assert len(vocab) == 4 + 12
    assert vocab.itos[4:8] == ["a", "dog", "cat", "the"]
    # singletons follow, alphabetically
    assert vocab.itos[8:] == ["and", "ball", "grass", "on", "plays", "runs", "sleeps", "with"]


def test_build_min_freq_above_every_count_gives_only_specials():
    vocab = Vocabulary.build(CAPTIONS, min_freq=6)
    assert vocab.itos == list(SPECIALS)


def test_build_max_size_keeps_most_frequent_words():
    vocab = Vocabulary.build(CAPTIONS, min_freq=1, max_size=3)
    assert vocab.itos == [PAD, BOS, EOS, UNK, "a", "dog", "cat"]
    assert len(vocab) == 7


def test_build_tokenizes_captions():
    vocab = Vocabulary.build(["A DOG.", "a dog!", "A Dog"], min_freq=3)
    assert vocab.itos == [PAD, BOS, EOS, UNK, "a", "dog"]


def test_constructor_rejects_bad_word_lists():
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(list(SPECIALS) + ["a", "a"])


# --- encode / decode --------------------------------------------------------------------------------------

@pytest.fixture
def vocab():
    return Vocabulary.build(CAPTIONS, min_freq=2)  # ids: a=4 dog=5 cat=6 the=7


def test_encode_adds_bos_eos_and_maps_unknown_to_unk(vocab):
    assert vocab.encode("The dog") == [1, 7, 5, 2]
    assert vocab.encode("A zebra and a cat.") == [1, 4, 3, 3, 4, 6, 2]


def test_encode_max_len_truncates_words_but_keeps_eos(vocab):
    assert vocab.encode("a dog the cat a dog", max_len=3) == [1, 4, 5, 7, 2]
    assert vocab.encode("a dog", max_len=5) == [1, 4, 5, 2]
    assert vocab.encode("a dog", max_len=0) == [1, 2]


def test_empty_caption_encodes_to_bos_eos(vocab):
    assert vocab.encode("") == [vocab.bos_id, vocab.eos_id] == [1, 2]
    assert vocab.encode("...") == [1, 2]


def test_decode_stops_at_eos_and_skips_pad_and_bos(vocab):
    assert vocab.decode([1, 4, 5, 2, 6, 7]) == "a dog"
    assert vocab.decode([1, 0, 4, 0, 6, 2, 0, 0]) == "a cat"
    assert vocab.decode([2, 4, 5]) == ""
    assert vocab.decode([]) == ""


def test_decode_unknown_and_out_of_range_ids_become_unk(vocab):
    assert vocab.decode([4, 3, 5]) == "a <unk> dog"
    assert vocab.decode([4, 999, -1]) == "a <unk> <unk>"


def test_decode_accepts_tensors(vocab):
    import torch

    assert vocab.decode(torch.tensor([1, 7, 6, 2, 0])) == "the cat"


def test_encode_decode_round_trip(vocab):
    assert vocab.decode(vocab.encode("The cat, a dog!")) == "the cat a dog"


# --- serialisation ----------------------------------------------------------------------------------------

def test_to_dict_from_dict_round_trip(vocab):
    data = vocab.to_dict()
    assert data == {"itos": [PAD, BOS, EOS, UNK, "a", "dog", "cat", "the"], "generated": 8}
    again = Vocabulary.from_dict(data)
    assert again.itos == vocab.itos
    assert again.stoi == vocab.stoi
    assert again.encode("the dog and a cat") == vocab.encode("the dog and a cat") == [1, 7, 5, 3, 4, 6, 2]
    assert Vocabulary.from_dict({"itos": data["itos"]}).generated == 8  # checkpoints from before copying


def test_extend_appends_copy_only_words():
    base = Vocabulary([PAD, BOS, EOS, UNK, "a", "dog"])
    ext = base.extend(["dog", "squirrel", "apple", "squirrel"])
    assert ext.itos[-2:] == ["squirrel", "apple"] and ext.generated == 6 and len(ext) == 8
    assert ext.encode("a squirrel") == [1, 4, 6, 2]  # a noun the captions lacked now has an id
    assert Vocabulary.from_dict(ext.to_dict()).generated == 6
    with pytest.raises(ValueError, match="generated must be in"):
        Vocabulary([PAD, BOS, EOS, UNK], generated=9)


def test_decode_makes_articles_and_plurals_agree():
    v = Vocabulary([PAD, BOS, EOS, UNK, *"a an umbrella two three hour on people".split()]).extend(["dog", "mouse"])
    ids = lambda text: [v.stoi[w] for w in text.split()]  # noqa: E731
    assert v.decode(ids("a umbrella on two dog")) == "an umbrella on two dogs"
    assert v.decode(ids("an dog a hour three mouse two people")) == "a dog an hour three mice two people"
    assert Vocabulary.from_dict(v.to_dict()).nouns == {"dog", "mouse"}
    plain = Vocabulary(v.itos)  # no copied nouns: only the articles are fixed
    assert plain.decode(ids("a umbrella on two dog")) == "an umbrella on two dog"


def test_a_copied_noun_after_a_group_of_is_plural_where_it_heads_its_phrase():
    words = "a group herd of on standing player players cattle".split()
    v = Vocabulary([PAD, BOS, EOS, UNK, *words]).extend(["wolf", "baseball", "cattle"])
    ids = lambda text: [v.stoi[w] for w in text.split()]  # noqa: E731
    assert v.decode(ids("a group of wolf standing on a group of wolf")) == \
        "a group of wolves standing on a group of wolves"
    assert v.decode(ids("a group of baseball players")) == "a group of baseball players"  # "baseball" is no head
    assert v.decode(ids("a herd of cattle")) == "a herd of cattle"  # plural already: not "cattles"
    assert v.decode(ids("a wolf of wolf")) == "a wolf of wolf"  # "of" after a word that is no group's


def test_to_dict_is_a_copy(vocab):
    data = vocab.to_dict()
    data["itos"].append("zebra")
    assert len(vocab) == 8


@pytest.mark.parametrize(
    "bad",
    [
        {},                                            # no itos
        {"words": list(SPECIALS)},                     # wrong key
        None,                                          # not a dict
        {"itos": None},                                # not a list
        {"itos": ["a", "b", "c", "d"]},                # specials missing
        {"itos": list(SPECIALS) + ["dog", "dog"]},     # duplicates
        {"itos": [[PAD], BOS, EOS, UNK]},              # unhashable entry
    ],
)
def test_from_dict_malformed_raises_checkpoint_error(bad):
    with pytest.raises(CheckpointError, match="checkpoint vocabulary is malformed"):
        Vocabulary.from_dict(bad)


def test_decoding_text_needs_no_noun_table():
    """The bottom layer stays the bottom: turning ids into text imports neither the noun table nor a model."""
    code = ("import sys; from captioner.vocab import Vocabulary; "
            "v = Vocabulary(['<pad>', '<bos>', '<eos>', '<unk>', 'a', 'owl']).extend(['owl', 'dog']); "
            "assert v.decode([4, 5]) == 'an owl', v.decode([4, 5]); "
            "print(sorted(m for m in sys.modules if m.startswith('captioner.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "captioner.nouns" not in out and "captioner.model" not in out, out
