"""Grounding: the subject / person / repetition / hallucination rates on hand-made cases, the jsonl `objects`
field, several training sources at once, person re-weighting, and the content-word repetition ban."""
import json
import math
import subprocess
import sys

import pytest
import torch

from captioner.checkpoint import load_checkpoint
from captioner.config import DecodeConfig, TrainConfig
from captioner.datasets import Item, read_captions, shows_person, training_weights
from captioner.decoding import greedy, rules_for
from captioner.errors import ConfigError, DatasetError
from captioner.grounding import (agreed_subjects, could_name, format_grounding, grounding_metrics,
                                 mentioned_objects, names_any, repeats_content_word)
from captioner.training import EpochSampler
from captioner.vocab import SPECIALS, Vocabulary, tokenize
from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES, DATA

EVERYDAY = DATA / "everyday" / "captions.jsonl"


def test_subject_is_named_by_whole_words_singular_or_plural():
    assert names_any(tokenize("two wolves in the snow"), ["wolf"])
    assert names_any(tokenize("a wolf in the snow"), ["wolves", "wolf"])
    assert names_any(tokenize("buses parked on a street"), ["bus"])
    assert names_any(tokenize("a man eating a hot dog"), ["hot dog"])
    assert not names_any(tokenize("a dog on a hot plate"), ["hot dog"])  # the two words, not apart
    assert not names_any(tokenize("a category of things"), ["cat"])  # a word inside another does not count
    assert not names_any(tokenize("a catalog on a table"), ["cat", "cats"])
    assert not names_any(tokenize("a bus stop"), [])


def test_could_name_agrees_with_names_any_on_what_a_vocabulary_can_say():
    words = {"a", "dog", "hot", "wolves", "bus"}
    assert could_name(["wolf"], words)  # "wolves" would name it
    assert could_name(["snake", "hot dog"], words)  # "hot dog" from two known words
    assert not could_name(["hot dog"], {"a", "dog"})
    assert not could_name(["snake", "cat"], words)
    assert not could_name(["traffic light pole"], {"traffic", "light", "pole"})  # names_any matches pairs only
    assert not names_any(tokenize("traffic light pole"), ["traffic light pole"])
    assert not could_name([], words) and not could_name([" "], words)


def test_repetition_counts_content_words_and_plurals_but_not_function_words():
    assert repeats_content_word(tokenize("a cat laying on top of a cat"))
    assert repeats_content_word(tokenize("a dog next to two dogs"))
    assert not repeats_content_word(tokenize("a man on a horse in front of a fence on the beach"))
    assert not repeats_content_word(tokenize("a man and a woman at a table"))


def test_metrics_on_hand_made_items():
    refs = [["a wolf in the snow", "a gray wolf growling"],  # no person: "a man" is a person hallucination
            ["a man riding a horse", "a person on a horse"],
            ["a plate of spaghetti", "pasta on a plate"]]
    hyps = ["a man standing in the snow", "a man riding a horse on a horse", "a plate of pasta with a fork"]
    g = grounding_metrics(refs, hyps, [["wolf", "wolves"], ["horse"], ["spaghetti", "pasta"]])
    assert g["subject_named"] == pytest.approx(2 / 3, abs=1e-4) and g["subject_items"] == 3
    assert g["person_hallucination"] == 0.5 and g["person_free_items"] == 2
    assert g["repetition"] == pytest.approx(1 / 3, abs=1e-4)
    assert g["object_hallucination"] == pytest.approx(1 / 3, abs=1e-4)  # the fork: no reference has it
    assert g["reference_repetition"] == 0.0
    assert "subject named 66.7%" in format_grounding(g)


def test_without_objects_the_subject_is_what_most_references_agree_on():
    refs = [tokenize(c) for c in ["a dog on a couch", "two dogs sleeping", "a puppy on a sofa with a cat"]]
    assert agreed_subjects(refs) == ["dog"]  # couch/sofa/cat: one reference each
    assert mentioned_objects(tokenize("a teddy bear and two cats")) >= {"teddy_bear", "cat", "bear"}
    g = grounding_metrics([["a tree", "a house"]], ["a dog"])  # no agreed noun: left out
    assert g["subject_items"] == 0 and g["subject_named"] is None


def test_jsonl_objects_are_kept_and_the_images_folder_is_found():
    data = read_captions(str(EVERYDAY))  # images live in everyday/images/, named relative to it
    assert len(data.items) == 30 and not data.missing
    eagle = next(it for it in data.items if it.image.endswith("eagle.jpg"))
    assert eagle.objects == ["eagle", "bird", "raptor"] and len(eagle.captions) == 3


def test_bad_objects_field_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.jpg", "caption": "a dog", "objects": "dog"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: expected 'objects' to be a list"):
        read_captions(str(bad))


def test_evaluate_cli_reports_the_rates_on_everyday_without_images_or_out(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "evaluate", "--data", str(EVERYDAY), "--no-meteor",
                           "--quiet", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "subject named" in proc.stdout and "person where none" in proc.stdout and "over 30 items" in proc.stdout


def test_person_share_reweights_draws_and_source_weights_multiply():
    items = [Item(f"{i}.jpg", ["a man on a bench"] if i < 8 else ["a dog on a bench"], i) for i in range(10)]
    items[9].weight = 3.0
    assert shows_person(items[0]) and not shows_person(items[9])
    w = training_weights(items, 0.0)
    assert w.tolist() == [1.0] * 9 + [3.0]
    w = training_weights(items, 0.5)
    assert float(w[:8].sum()) == pytest.approx(float(w[8:].sum()))  # half the draws each
    assert float(w[9] / w[8]) == pytest.approx(3.0)
    draws = list(EpochSampler(10, seed=0, epoch=0, weights=torch.tensor([0.0] * 9 + [1.0])))
    assert draws == [9] * 10
    uniform = list(EpochSampler(10, seed=0, epoch=0, weights=torch.ones(10)))
    assert sorted(uniform) == list(range(10))  # equal weights: the permutation, as without weights
    with pytest.raises(ConfigError, match="person_share"):
        TrainConfig(person_share=1.0).validate()


def test_content_words_are_said_once_with_no_repeat_words():
    vocab = Vocabulary(list(SPECIALS) + "a cat on top of".split())
    cat = vocab.stoi["cat"]
    script = [vocab.stoi[w] for w in "a cat on top of a cat".split()] + [vocab.eos_id]

    def step(tokens, state):  # scripted: prefers the next word of `script`, then "cat"
        t = int(state["t"][0])
        logp = torch.full((tokens.size(0), len(vocab)), -5.0)
        logp[:, script[min(t, len(script) - 1)]] = -0.1
        logp[:, cat] = torch.maximum(logp[:, cat], torch.tensor(-1.0))
        return logp, {"t": state["t"] + 1}

    def run(cfg):
        hyp = greedy(step, {"t": torch.zeros(1, dtype=torch.long)}, 1, vocab.bos_id, 10, rules_for(cfg, vocab))
        return vocab.decode(hyp[0][0].tokens)

    assert run(DecodeConfig(method="greedy")) == "a cat on top of a cat"
    # the second "cat" is banned; "a", "on", "of" (function words) may come again (and, for this script, may
    # end the caption: the default rule against that is decoding's no_bad_endings, tested there)
    assert run(DecodeConfig(method="greedy", no_repeat_words=True, no_bad_endings=False)) == "a cat on top of a"


def test_training_on_two_sources_records_both(tmp_path, feature_cache):
    flickr = DATA / "flickr8k"
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "train",
                           "--data", str(COCO_MINI_TRAIN), "--images", str(COCO_MINI_TRAIN_IMAGES),
                           "--data", str(flickr / "Flickr8k.token.txt"), "--images", str(flickr / "extra-images"),
                           "--split", "train", "--data-weight", "1", "--data-weight", "2", "--person-share", "0.5",
                           "--embed-dim", "16", "--hidden-dim", "16", "--epochs", "1", "--min-freq", "1",
                           "--cache-dir", feature_cache, "--quiet", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "train: 171 images from 2 sources" in proc.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    sources = ckpt["data"]["sources"]
    assert [s["format"] for s in sources] == ["coco", "flickr8k"] and [s["weight"] for s in sources] == [1.0, 2.0]
    assert [s["train_images"] for s in sources] == [80, 91] and ckpt["train_config"]["person_share"] == 0.5
    coco_words = {w for it in read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES)).items for c in it.captions for w in tokenize(c)}
    flickr_only = {w for it in read_captions(str(flickr / "Flickr8k.token.txt"), str(flickr / "extra-images"),
                                             split="train").items for c in it.captions for w in tokenize(c)} - coco_words
    assert flickr_only and flickr_only <= set(ckpt["vocab"]["itos"])  # the vocabulary is built from both


def test_mismatched_source_flags_are_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "train", "--data", str(COCO_MINI_TRAIN),
                           "--data", str(COCO_MINI_TRAIN), "--images", "a", "--images", "b", "--images", "c",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--images given 3 times for 2 --data sources" in lines[0]


def test_person_detector_trains_beside_the_caption_and_gates_person_words(tmp_path, feature_cache):
    from captioner.config import ModelConfig
    from captioner.decoding import decode
    from captioner.features import encode_images
    from captioner.grounding import PERSON_WORDS
    from captioner.model import build_model
    from captioner.training import fit

    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=32, hidden_dim=64, dropout=0.0, person_gate=True), len(vocab))
    cfg = TrainConfig(epochs=8, batch_size=32, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    fit(model, vocab, data, None, cfg, str(tmp_path), torch.device("cpu"), cache_dir=feature_cache,
        progress=False, log=lambda m: None)
    model.eval()
    feats = encode_images(model, [it.image for it in data.items], torch.device("cpu"), cache_dir=feature_cache,
                          progress=False).float()  # (N,1,E)
    labels = torch.tensor([shows_person(it) for it in data.items])
    with torch.no_grad():
        fired = model.decoder.init_state(feats)["person_logit"] > 0
    assert 0 < int(labels.sum()) < len(labels)
    balanced_accuracy = (fired[labels].float().mean() + (~fired[~labels]).float().mean()) / 2
    assert balanced_accuracy > 0.75, balanced_accuracy  # it learned the labels, for both classes

    free = DecodeConfig(method="greedy")
    gated = DecodeConfig(method="greedy", person_gate=True)
    plain = [vocab.decode(h[0].tokens) for h in decode(model.decoder, feats, vocab, free)]
    kept = [vocab.decode(h[0].tokens) for h in decode(model.decoder, feats, vocab, gated)]
    for said, gate_said, on in zip(plain, kept, fired.tolist()):
        if on:
            assert gate_said == said  # where it fires, nothing changes
        else:
            assert not PERSON_WORDS & set(gate_said.split()), gate_said
    assert any(PERSON_WORDS & set(p.split()) for p, on in zip(plain, fired.tolist()) if not on)  # it did change some


def test_require_object_searches_for_the_caption_that_names_the_noun_where_the_model_puts_it():
    from captioner.decoding import decode

    vocab = Vocabulary(list(SPECIALS) + "a dog on grass snake near".split())

    class Scripted:  # next-word probabilities by the caption so far; its own caption is "a dog on grass"
        nexts = {"": {"a": 0.9, "grass": 0.1}, "a": {"dog": 0.8, "snake": 0.01, "grass": 0.19},
                 "a dog": {"on": 0.7, "near": 0.3}, "a dog on": {"grass": 0.9, "a": 0.1},
                 "a dog near": {"a": 1.0}, "a dog near a": {"snake": 0.5, "dog": 0.5}}

        def init_state(self, feats):
            B = feats.size(0)
            return {"said": torch.zeros(B, 0, dtype=torch.long), "cand_ids": torch.full((B, 1), vocab.stoi["snake"]),
                    "cand_logp": torch.full((B, 1), -0.1)}  # the CNN is sure of a snake: p = 0.9

        def step(self, tokens, state):
            said = state["said"] if tokens[0] == vocab.bos_id else torch.cat([state["said"], tokens[:, None]], 1)
            logp = torch.full((tokens.size(0), len(vocab)), -30.0)
            for i, row in enumerate(said.tolist()):
                for word, p in self.nexts.get(vocab.decode(row), {"<eos>": 0.9}).items():
                    logp[i, vocab.stoi[word]] = math.log(p)
            return logp, {**state, "said": said}

    feats = torch.zeros(2, 1, 4)
    free = decode(Scripted(), feats, vocab, DecodeConfig(method="beam", max_len=8))
    named = decode(Scripted(), feats, vocab, DecodeConfig(method="beam", max_len=8, require_object=True))
    assert [vocab.decode(h[0].tokens) for h in free] == ["a dog on grass"] * 2
    # the most probable caption that says it, where the model puts it ("... near a snake"): not the noun forced
    # first ("a snake", 0.01) nor tacked on where the model would end
    assert [vocab.decode(h[0].tokens) for h in named] == ["a dog near a snake"] * 2
    assert named[0][0].finished
    assert named[0][0].log_prob == pytest.approx(math.log(0.9 * 0.8 * 0.3 * 1.0 * 0.5 * 0.9))
    # greedy: one beam a bank, it follows its own caption and takes the noun where it first can
    greedy_named = decode(Scripted(), feats, vocab, DecodeConfig(method="greedy", max_len=8, require_object=True))
    assert [vocab.decode(h[0].tokens) for h in greedy_named] == ["a snake"] * 2
    # sampling is begun with the noun instead (top-k 1: deterministic), "a snake", and the model goes on
    sampled = decode(Scripted(), feats, vocab, DecodeConfig(method="sample", top_k=1, max_len=8, require_object=True))
    assert [vocab.decode(h[0].tokens) for h in sampled] == ["a snake"] * 2


def test_the_shipped_default_decodes_grounded_and_names_a_subject_coco_has_no_word_for():
    from captioner.checkpoint import load_checkpoint
    from captioner.defaults import default_checkpoint
    from captioner.inference import Captioner

    ckpt = load_checkpoint(default_checkpoint())
    decode = ckpt["decode_config"]
    assert decode["no_repeat_words"] and decode["person_gate"] and decode["require_object"]
    assert decode["fluent"] and decode["no_bad_endings"]
    assert ckpt["model_config"]["copy_nouns"] and ckpt["model_config"]["concepts"]
    assert ckpt["fluent"]["model_config"]["copy_nouns"] == 0  # and a fluent COCO decoder beside it
    assert "grounding" in ckpt["held_out_scores"] and ckpt["held_out_scores"]["everyday_grid"]
    cap = Captioner.load(default_checkpoint(), device="cpu")
    result = cap.caption_detailed([str(DATA / "everyday" / "images" / "wolf_snow.jpg")])[0]
    assert result.candidates[0].word == "wolf" and "wolf" not in cap.vocab.itos[:cap.vocab.generated]
    assert "wolf" in result.caption.split(), result.caption  # copied: no training caption says it
    # the fluent caption did not name the wolf the CNN is sure of: the grounded decoder with the fluent one fused in
    assert result.decoders == ["fused"]
    coco = cap.caption_detailed([str(DATA / "coco2017" / "images" / "000000000285.jpg")])[0]
    assert coco.decoders == ["fluent"] and "bear" in coco.caption, coco  # a COCO photo: the fluent caption
