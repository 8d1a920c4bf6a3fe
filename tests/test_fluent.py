"""The fluent second decoder (fluent.py): it searches its own words and answers in the model's vocabulary,
its caption stands unless it misses a noun the CNN is sure of, its person words follow the grounded model's
detector, and it travels in the checkpoint."""
import json
import math
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from captioner.checkpoint import load_checkpoint, model_payload, save_checkpoint
from captioner.config import DecodeConfig, ModelConfig
from captioner.decoder import CaptionDecoder
from captioner.decoding import decode
from captioner.errors import CheckpointError
from captioner import fluent as fluent_module
from captioner.fluent import FluentDecoder, decode_model, fluent_from_payload, fluent_payload
from captioner.inference import Captioner
from captioner.model import build_model
from captioner.nouns import NounSpace, load_table
from captioner.vocab import SPECIALS, Vocabulary
from conftest import DATA

SHARED = Vocabulary(list(SPECIALS) + "a dog dogs on the grass man sitting snake in".split()).extend(
    NounSpace(load_table()).words)
OWN = Vocabulary(list(SPECIALS) + "a man on the grass dog sitting dogs".split())  # its own order, a subset


def tiny_decoder(vocab: Vocabulary, seed: int = 0) -> CaptionDecoder:
    torch.manual_seed(seed)
    return CaptionDecoder(len(vocab), 1280, ModelConfig(embed_dim=16, hidden_dim=32, dropout=0.0)).eval()


def words(hyps, vocab):
    return [vocab.decode(h[0].tokens) for h in hyps]


class InShared:
    """The fluent decoder stepping in the shared vocabulary, every word it lacks at -inf: what its search must
    equal."""

    def __init__(self, plain):
        self.plain = plain

    def init_state(self, feats):
        return self.plain.init_state(feats)

    def step(self, tokens, state):
        own, state = self.plain.step(torch.tensor([OWN.stoi[SHARED.itos[t]] for t in tokens.tolist()]), state)
        out = torch.full((own.size(0), len(SHARED)), float("-inf"))
        for w in OWN.itos[: OWN.generated]:
            out[:, SHARED.stoi[w]] = own[:, OWN.stoi[w]]
        return out, state


@torch.no_grad()
def test_the_fluent_decoder_searches_its_own_words_and_answers_in_the_shared_vocabulary():
    plain = tiny_decoder(OWN)
    fluent = FluentDecoder(plain, OWN, SHARED, {})
    feats = torch.randn(4, 1, 1280).relu()
    for cfg in (DecodeConfig(method="greedy"), DecodeConfig(beam_size=3, length_penalty=0.5, num_captions=2),
                DecodeConfig(beam_size=3, no_repeat_words=True, person_gate=True)):
        person = torch.tensor([-3.0, 3.0, -3.0, 3.0])
        got = fluent.search(feats, cfg, person)
        in_shared = decode(fluent_module._WithPerson(InShared(plain), person), feats, SHARED, cfg)
        assert [[(h.tokens, h.log_prob, h.score) for h in hs] for hs in got] == \
               [[(h.tokens, h.log_prob, h.score) for h in hs] for hs in in_shared]  # ids in SHARED
        alone = decode(fluent_module._WithPerson(plain, person), feats, OWN, cfg)
        assert words(got, SHARED) == words(alone, OWN)


def test_a_fluent_vocabulary_with_a_word_the_model_lacks_is_refused():
    other = Vocabulary(list(SPECIALS) + "a blorp".split())
    with pytest.raises(ValueError, match="1 words the model's lacks.*'blorp'"):
        FluentDecoder(tiny_decoder(other), other, SHARED, {})


class Grounded:
    """A scripted grounded decoder: the CNN is sure of "snake" (p = 0.9) in row 0 and 0.2 sure in row 1; it
    captions every row "a snake in the grass"; its person detector says no person (logit -5)."""

    def init_state(self, feats):
        B = feats.size(0)
        p = torch.tensor([0.9, 0.2] * B)[:B]
        return {"t": torch.zeros(B, dtype=torch.long), "cand_ids": torch.full((B, 1), SHARED.stoi["snake"]),
                "cand_logp": p.log().unsqueeze(1), "person_logit": torch.full((B,), -5.0)}

    def step(self, tokens, state):
        script = [SHARED.stoi[w] for w in "a snake in the grass".split()] + [SHARED.eos_id]
        logp = torch.full((tokens.size(0), len(SHARED)), -5.0)
        for i, t in enumerate(state["t"].tolist()):
            logp[i, script[min(t, len(script) - 1)]] = -0.01
        return logp, {**state, "t": state["t"] + 1}


class Fluent:
    """A scripted fluent decoder, in its own vocabulary (OWN): "a man sitting on the grass", or without "man":
    "a dog sitting on the grass"."""

    def init_state(self, feats):
        return {"t": torch.zeros(feats.size(0), dtype=torch.long)}

    def step(self, tokens, state):
        script = [OWN.stoi[w] for w in "a man sitting on the grass".split()] + [OWN.eos_id]
        logp = torch.full((tokens.size(0), len(OWN)), -9.0)
        logp[:, OWN.stoi["dog"]] = -1.0  # second choice at every step
        for i, t in enumerate(state["t"].tolist()):
            logp[i, script[min(t, len(script) - 1)]] = -0.01
        return logp, {**state, "t": state["t"] + 1}


def scripted(fluent) -> FluentDecoder:
    return FluentDecoder(fluent, OWN, SHARED, {})


def test_the_fluent_search_keeps_to_words_banned_in_the_shared_vocabulary():
    ban = torch.zeros(2, len(SHARED), dtype=torch.bool)
    ban[0, SHARED.stoi["man"]] = True  # row 0 may not say "man"; words it does not have change nothing
    ban[1, SHARED.stoi["snake"]] = True
    hyps = scripted(Fluent()).search(torch.zeros(2, 1, 4), DecodeConfig(method="beam", beam_size=2), ban=ban)
    assert words(hyps, SHARED) == ["a dog sitting on the grass", "a man sitting on the grass"]


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_the_fluent_caption_stands_unless_it_misses_a_noun_the_cnn_is_sure_of(method):
    model = SimpleNamespace(decoder=Grounded(), fluent=scripted(Fluent()))
    feats = torch.zeros(2, 1, 4)
    cfg = DecodeConfig(method=method, beam_size=2, no_repeat_words=True, ground_prob=0.5, fusion=0.0)
    # row 0: the CNN is 90 % sure of a snake the fluent caption does not name -> the grounded caption;
    # row 1: 20 % sure, under ground_prob -> the fluent caption
    hyps = decode_model(model, feats, SHARED, cfg)
    assert words(hyps, SHARED) == ["a snake in the grass", "a man sitting on the grass"]
    assert [h[0].decoder for h in hyps] == ["grounded", "fluent"]  # --json says which one wrote it
    # sure of both at 0.1; at 1.0 of neither; without the fluent decoder, the grounded one alone
    assert words(decode_model(model, feats, SHARED, DecodeConfig(method=method, ground_prob=0.1, fusion=0.0)),
                 SHARED) == ["a snake in the grass"] * 2
    assert words(decode_model(model, feats, SHARED, DecodeConfig(method=method, ground_prob=1.0)),
                 SHARED) == ["a man sitting on the grass"] * 2
    assert words(decode_model(model, feats, SHARED, DecodeConfig(method=method, fluent=False)),
                 SHARED) == ["a snake in the grass"] * 2
    # the person gate of the fluent decoder reads the grounded model's detector (logit -5: p = 0.007)
    gated = DecodeConfig(method=method, ground_prob=1.0, person_gate=True, fluent_person_prob=0.5)
    assert words(decode_model(model, feats, SHARED, gated), SHARED) == ["a dog sitting on the grass"] * 2
    open_gate = DecodeConfig(method=method, ground_prob=1.0, person_gate=True, fluent_person_prob=0.001)
    assert words(decode_model(model, feats, SHARED, open_gate), SHARED) == ["a man sitting on the grass"] * 2


def test_a_photo_whose_sure_noun_the_fluent_decoder_lacks_is_handed_over_without_its_search():
    class Counting(Fluent):
        def __init__(self):
            self.rows = []  # the rows each search began with

        def init_state(self, feats):
            self.rows.append(feats.size(0))
            return super().init_state(feats)

    fluent = Counting()
    model = SimpleNamespace(decoder=Grounded(), fluent=scripted(fluent))
    # row 0: 90 % sure of a snake, a word the fluent decoder does not have; row 1: 20 % sure
    cfg = DecodeConfig(method="beam", beam_size=2, ground_prob=0.5, fusion=0.0)
    hyps = decode_model(model, torch.zeros(2, 1, 4), SHARED, cfg)
    assert words(hyps, SHARED) == ["a snake in the grass", "a man sitting on the grass"]
    assert [h[0].decoder for h in hyps] == ["grounded", "fluent"]
    assert fluent.rows == [1]  # only row 1 was searched by the fluent decoder
    fluent.rows.clear()
    decode_model(model, torch.zeros(1, 1, 4), SHARED, replace(cfg, fusion=0.25))
    assert fluent.rows == [1]  # once, by the fused decoder: no search of its own


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_handed_over_photo_is_captioned_with_the_fluent_decoder_fused_in_if_that_names_the_noun(method):
    model = SimpleNamespace(decoder=Grounded(), fluent=scripted(Fluent()))
    feats = torch.zeros(1, 1, 4)  # the CNN is 90 % sure of a snake; the fluent caption is "a man sitting ..."
    # a light fusion: the grounded decoder's "snake" (the fluent one lacks it: its <unk>, -9) still wins
    light = decode_model(model, feats, SHARED, DecodeConfig(method=method, beam_size=2, fusion=0.25))
    assert words(light, SHARED) == ["a snake in the grass"] and light[0][0].decoder == "fused"
    # a heavy one says "a man sitting on the grass", which does not name the snake: the grounded caption
    heavy = decode_model(model, feats, SHARED, DecodeConfig(method=method, beam_size=2, fusion=5.0))
    assert words(heavy, SHARED) == ["a snake in the grass"] and heavy[0][0].decoder == "grounded"


@torch.no_grad()
def test_the_fused_step_is_the_normalised_product_of_both_decoders():
    model = copy_model_with_fluent()
    feats = torch.randn(3, 1, 1280).relu()
    fused = fluent_module.Fused(model.decoder, model.fluent, 0.5)
    tokens = torch.tensor([SHARED.stoi[w] for w in ("<bos>", "dog", "snake")])  # "snake": the fluent one lacks it
    log_probs, state = fused.step(tokens, fused.init_state(feats))
    grounded, _ = model.decoder.step(tokens, model.decoder.init_state(feats))
    own_tokens = torch.tensor([OWN.stoi.get(SHARED.itos[t], OWN.unk_id) for t in tokens.tolist()])
    own, _ = model.fluent.decoder.step(own_tokens, model.fluent.decoder.init_state(feats))
    fluent = torch.stack([own[:, OWN.stoi.get(w, OWN.unk_id)] for w in SHARED.itos], dim=1)  # (3,V): <unk> if lacking
    assert torch.allclose(log_probs, torch.log_softmax(grounded + 0.5 * fluent, dim=-1), atol=1e-5)
    assert {"h", "c", "cand_ids", "fluent.h", "fluent.c"} <= set(state)  # both states, batch first


def test_a_plural_of_the_sure_noun_counts_as_naming_it():
    class Dogs(Fluent):
        def step(self, tokens, state):
            logp, state = super().step(tokens, state)
            logp[:, OWN.stoi["dogs"]] = 0.0
            return logp, state

    class SureOfDog(Grounded):
        def init_state(self, feats):
            return {**super().init_state(feats), "cand_ids": torch.full((feats.size(0), 1), SHARED.stoi["dog"]),
                    "cand_logp": torch.full((feats.size(0), 1), math.log(0.9))}

    model = SimpleNamespace(decoder=SureOfDog(), fluent=scripted(Dogs()))
    hyps = decode_model(model, torch.zeros(1, 1, 4), SHARED, DecodeConfig(method="greedy", max_len=3))
    assert words(hyps, SHARED) == ["dogs dogs dogs"]  # the fluent caption: it names the noun, in the plural


def copy_model_with_fluent():
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=32, dropout=0.0, copy_nouns=4, concepts=True,
                                    person_gate=True), len(SHARED), vocab=SHARED).eval()
    own_cfg = ModelConfig(embed_dim=16, hidden_dim=32, dropout=0.0)
    payload = {"model_config": own_cfg.to_dict(), "vocab": OWN.to_dict(),
               "decoder_state": tiny_decoder(OWN, seed=1).state_dict(), "data": {"data": "coco train"}}
    model.fluent = fluent_from_payload(payload, SHARED, model.encoder.feature_dim)
    return model


def test_the_fluent_decoder_travels_in_the_checkpoint_and_info_describes_it(tmp_path):
    model = copy_model_with_fluent()
    path = tmp_path / "both.pt"
    save_checkpoint(path, model_payload(model, SHARED))
    ckpt = load_checkpoint(path)
    assert ckpt["fluent"]["data"] == {"data": "coco train"}
    photos = [str(p) for p in sorted((DATA / "everyday" / "images").glob("*.jpg"))[:3]]
    cfg = DecodeConfig(beam_size=2, ground_prob=0.3)
    in_memory = Captioner(model, SHARED, torch.device("cpu"), cfg, engine="torch").caption(photos)
    loaded = Captioner.load(path, device="cpu", decode=cfg, engine="torch")
    assert loaded.model.fluent is not None and loaded.caption(photos) == in_memory
    alone = loaded.caption(photos, fluent=False)
    assert alone != loaded.caption(photos, ground_prob=1.0)  # two decoders, two different captions
    out = subprocess.run([sys.executable, "-m", "captioner", "info", str(path)], capture_output=True, text=True)
    info = json.loads(out.stdout)
    assert info["fluent_decoder"]["vocab_size"] == len(OWN) and info["fluent_decoder"]["model"]["copy_nouns"] == 0


def test_a_checkpoint_whose_fluent_decoder_does_not_fit_is_a_one_line_error(tmp_path):
    model = copy_model_with_fluent()
    payload = model_payload(model, SHARED)
    payload["fluent"]["vocab"] = Vocabulary(list(SPECIALS) + "a blorp".split()).to_dict()
    path = tmp_path / "bad.pt"
    save_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match=r"bad\.pt: bad fluent decoder"):
        Captioner.load(path, device="cpu", engine="torch")
    photo = str(DATA / "everyday" / "images" / "wolf_snow.jpg")
    out = subprocess.run([sys.executable, "-m", "captioner", "caption", photo, "--checkpoint", str(path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "bad fluent decoder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_plain_decoder_is_what_may_be_carried():
    ckpt = {"model_config": ModelConfig(copy_nouns=4).to_dict(), "decoder_state": {}}
    with pytest.raises(ValueError, match="plain image decoder"):
        fluent_payload(ckpt)


def test_training_from_a_two_decoder_model_trains_and_keeps_the_grounded_one(tmp_path, feature_cache):
    from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES

    model = copy_model_with_fluent()
    save_checkpoint(tmp_path / "both.pt", model_payload(model, SHARED))
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "train", "--data", str(COCO_MINI_TRAIN),
                           "--images", str(COCO_MINI_TRAIN_IMAGES), "--init", str(tmp_path / "both.pt"), "--epochs",
                           "1", "--batch-size", "16", "--cache-dir", feature_cache, "--quiet", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trains and keeps its grounded decoder only" in proc.stdout + proc.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert "fluent" not in ckpt and ckpt["model_config"]["copy_nouns"] == 4
