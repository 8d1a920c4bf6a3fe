"""The copy decoder: a normalised mixture of generating and copying the CNN's nouns, copy-only words, the
novel-word training signal, constrained decoding, and a tiny model that names an object no caption taught it."""
import dataclasses
import math

import pytest
import torch

from captioner.config import DecodeConfig, ModelConfig, TrainConfig
from captioner.datasets import read_captions
from captioner.decoding import decode, doubt_ban
from captioner.errors import ConfigError
from captioner.fluent import decode_model
from captioner.inference import Captioner
from captioner.media import load_image
from captioner.model import build_model
from captioner.nouns import NounSpace, load_table
from captioner.training import fit
from captioner.vocab import SPECIALS, Vocabulary, tokenize
from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES

NOUNS = NounSpace(load_table())
B, T = 3, 6


def copy_vocab() -> Vocabulary:
    return Vocabulary(list(SPECIALS) + "a dog on the grass cat sitting".split()).extend(NOUNS.words)


def copy_model(**kw):
    torch.manual_seed(0)
    vocab = copy_vocab()
    cfg = ModelConfig(embed_dim=16, hidden_dim=32, attention_dim=8, dropout=0.0, copy_nouns=4, **kw)
    return build_model(cfg, len(vocab), vocab=vocab).eval(), vocab


@pytest.mark.parametrize("kw, positions", [({}, 1), ({"concepts": True}, 1), ({"attention": True, "concepts": True}, 49),
                         ({"attention": True}, 49), ({"temporal": "gru", "temporal_bidirectional": True,
                                                      "num_frames": 4}, 4), ({"temporal": "mean", "num_frames": 4}, 4)],
                         ids=["global", "concepts", "attention-concepts", "attention", "video-bigru", "video-mean"])
def test_mixture_is_normalised_and_stepping_equals_teacher_forcing(kw, positions):
    model, vocab = copy_model(**kw)
    feats = torch.randn(B, positions, 1280).relu()
    tokens = torch.randint(4, len(vocab), (B, T))  # copy-only words as inputs too
    out = model.decoder(feats, tokens)
    assert out.logits.shape == (B, T, len(vocab))
    assert torch.allclose(out.logits.logsumexp(-1), torch.zeros(B, T), atol=1e-4)  # log-probs of a distribution
    for grad in (True, False):  # without grad, decoding's LSTM step (a per-word table of input gates)
        with torch.set_grad_enabled(grad):
            state = model.decoder.init_state(feats)
            for t in range(T):
                log_probs, state = model.decoder.step(tokens[:, t], state)
                assert torch.allclose(log_probs, out.logits[:, t], atol=1e-4)


def test_mixture_equals_its_definition_over_the_whole_vocabulary():
    """CopyHead.mix mixes only where the copy path can add (candidates, copy-only words): equal to
    logaddexp(log g + log P_vocab, log(1-g) + log P_copy) at every word, values and gradients, with hidden words."""
    model, vocab = copy_model(concepts=True)
    head = model.decoder.copy
    state = model.decoder.init_state(torch.randn(B, 1, 1280).relu())
    gen = torch.randn(B, T, head.gen_size, requires_grad=True)
    h, x = torch.randn(B, T, 32), torch.randn(B, T, 16)
    hide = torch.where(torch.rand(B, T) < 0.5, state["cand_ids"][:, :1].expand(B, T), -1)

    def definition():
        image = torch.cat([state["image"], state["cand_logp"][:, :1]], -1).unsqueeze(1).expand(-1, T, -1)
        z = head.gate(torch.cat([h, x, image], -1))
        p_gen = torch.nn.functional.pad(gen.log_softmax(-1), (0, len(vocab) - head.gen_size), value=-1e4)
        p_gen = p_gen.masked_fill(torch.nn.functional.one_hot(hide.clamp(min=0), len(vocab)).bool()
                                  & (hide >= 0).unsqueeze(-1), -1e4)
        ids = state["cand_ids"].unsqueeze(1).expand(B, T, -1)
        p_copy = torch.full_like(p_gen, -1e4).scatter(-1, ids, state["cand_logp"].log_softmax(-1).unsqueeze(1)
                                                       .expand(B, T, -1))
        return torch.logaddexp(torch.nn.functional.logsigmoid(z) + p_gen, torch.nn.functional.logsigmoid(-z) + p_copy)

    got, want = head.mix(gen, h, x, state, hide), definition()
    assert torch.equal(got, want)
    weights = torch.randn_like(want)
    assert torch.equal(*(torch.autograd.grad((y * weights).sum(), gen)[0] for y in (got, want)))


@torch.no_grad()
def test_copy_only_words_come_only_from_the_candidates():
    model, vocab = copy_model()
    feats = torch.randn(B, 1, 1280).relu()
    state = model.decoder.init_state(feats)
    log_probs, _ = model.decoder.step(torch.full((B,), vocab.bos_id), state)
    copy_only = torch.zeros(len(vocab), dtype=torch.bool)
    copy_only[vocab.generated:] = True
    for b in range(B):
        allowed = torch.zeros(len(vocab), dtype=torch.bool)
        allowed[state["cand_ids"][b]] = True
        assert float(log_probs[b][copy_only & ~allowed].max()) < -1e3  # impossible
        assert float(log_probs[b][copy_only & allowed].exp().sum()) > 0  # copyable
    assert state["cand_ids"].shape == (B, 4) and torch.all(state["cand_logp"] <= 0)


def test_uncopyable_targets_become_unk_and_hidden_words_must_be_copied():
    model, vocab = copy_model()
    state = model.decoder.init_state(torch.randn(1, 1, 1280).relu())
    cands = state["cand_ids"][0].tolist()
    other = next(i for i in range(vocab.generated, len(vocab)) if i not in cands)
    generated_cand = vocab.stoi["dog"]
    state["cand_ids"][0, 0] = generated_cand  # make an in-vocabulary word a candidate
    targets = torch.tensor([[cands[1], other, generated_cand, vocab.stoi["on"]]])
    fixed = model.decoder.copy.trainable_targets(targets, state, unk_id=vocab.unk_id)
    assert fixed.tolist() == [[cands[1], vocab.unk_id, generated_cand, vocab.stoi["on"]]]
    hide = model.decoder.copy.hide_mask(fixed, state, prob=1.0)
    assert hide.tolist() == [[-1, -1, generated_cand, -1]]  # only a candidate that could also be generated


def test_require_object_needs_a_copy_model_and_forces_the_word():
    model, vocab = copy_model()
    feats = torch.randn(2, 1, 1280).relu()
    state = model.decoder.init_state(feats)
    # the threshold just under the least sure top candidate: every image has a noun the caption must name;
    # and an untrained model made to generate "on on" and end there (EOS likely once min_len words are
    # said; the gate set to generate), so its free captions name no candidate and must be decoded again
    prob = float(state["cand_logp"][:, 0].min().exp()) * 0.999
    with torch.no_grad():
        model.decoder.fc.bias[vocab.eos_id] += 12.0
        model.decoder.fc.bias[vocab.stoi["on"]] += 10.0
        model.decoder.copy.gate.bias += 6.0
    # ("on on" may end there: the rule against ending on a preposition is not what this test is about)
    free = decode(model.decoder, feats, vocab, DecodeConfig(method="greedy", min_len=2, max_len=12,
                                                            no_bad_endings=False))
    cfg = DecodeConfig(method="greedy", require_object=True, require_prob=prob, min_len=2, max_len=12,
                       no_bad_endings=False)
    forced = decode(model.decoder, feats, vocab, cfg)
    for b, hyps in enumerate(forced):
        confident = [int(i) for i, lp in zip(state["cand_ids"][b], state["cand_logp"][b]) if lp >= math.log(prob)]
        assert confident and hyps[0].finished
        assert set(hyps[0].tokens) & set(confident), vocab.decode(hyps[0].tokens)
    assert [vocab.decode(f[0].tokens) for f in free] == ["on on", "on on"]
    plain = build_model(ModelConfig(embed_dim=16, hidden_dim=32), len(vocab)).eval()
    with pytest.raises(ConfigError, match="needs a copy model"):
        decode(plain.decoder, feats, vocab, DecodeConfig(require_object=True))


def test_a_coco_object_the_cnn_doubts_may_not_be_said():
    """doubt_ban: the forms of COCO's objects whose ImageNet classes the CNN gives less than the threshold
    (summed over the noun's classes, by the table this code ships)."""
    vocab = Vocabulary(list(SPECIALS) + "a on bird birds bear bears table tables dog dogs man kite grass".split())
    probs = torch.full((1, 1000), 1e-6)
    probs[0, 15] = 0.8  # a robin
    probs[0, NOUNS.membership[:, NOUNS.index["dog"]].bool()] = 0.0005  # 121 classes: 0.06 of dog in all
    ban = doubt_ban(probs, vocab, 0.001)[0]
    assert {w for w, b in zip(vocab.itos, ban.tolist()) if b} == {"bear", "bears", "table", "tables"}
    # not doubted: what it sees (bird, dog: a noun's classes add up), person words (the person detector's),
    # words that are no COCO object (grass) or that no ImageNet class names (kite: the bird is not the toy)
    assert not doubt_ban(probs, vocab, 1e-7).any()


def test_a_copy_model_does_not_say_a_word_the_cnn_doubts():
    model, vocab = copy_model()
    feats = torch.randn(2, 1, 1280).relu()
    with torch.no_grad():  # an untrained model made to generate "cat", not to copy
        model.decoder.fc.bias[vocab.stoi["cat"]] += 8.0
        model.decoder.copy.gate.bias += 6.0
    cat = NOUNS.noun_probs(model.decoder.copy.class_probs(feats))[:, NOUNS.index["cat"]]  # (2,)
    cfg = DecodeConfig(method="beam", beam_size=3, max_len=4, no_bad_endings=False)
    said = [set(vocab.decode(h[0].tokens).split()) for h in decode_model(model, feats, vocab, cfg)]
    assert all("cat" in s for s in said)
    doubted = dataclasses.replace(cfg, doubt_prob=float(cat.max()) * 1.01)
    said = [set(vocab.decode(h[0].tokens).split()) for h in decode_model(model, feats, vocab, doubted)]
    assert not any({"cat", "cats"} & s for s in said), said
    with pytest.raises(ConfigError, match="doubt_prob must be in"):
        DecodeConfig(doubt_prob=1.0).validate()


def test_a_copy_model_keeps_the_noun_table_it_was_trained_with(tmp_path):
    """A model trained before the package's table changed (here: ImageNet's "kite" still named "kite") saves,
    loads, saves again and names what the CNN sees with its own table, never the package's."""
    from captioner.checkpoint import load_checkpoint, model_payload, save_checkpoint

    old = [list(row) for row in load_table()]
    old[21] = ["bird", "hawk", "kite"]
    old_words = NounSpace(old).words
    assert "kite" in old_words and "kite" not in NOUNS.words
    torch.manual_seed(0)
    vocab = Vocabulary(list(SPECIALS) + "a dog on the grass".split()).extend(old_words)
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=32, dropout=0.0, copy_nouns=4), len(vocab),
                        vocab=vocab, copy_table=old).eval()
    save_checkpoint(tmp_path / "a.pt", model_payload(model, vocab))
    cap = Captioner.load(tmp_path / "a.pt", engine="torch")
    assert load_checkpoint(tmp_path / "a.pt")["copy_table"] == old
    assert cap.nouns.words == old_words
    assert torch.equal(cap.model.decoder.copy.membership, model.decoder.copy.membership)
    save_checkpoint(tmp_path / "b.pt", model_payload(cap.model, cap.vocab))  # re-saved (SCST, ship_default.py)
    assert load_checkpoint(tmp_path / "b.pt")["copy_table"] == old
    assert Captioner.load(tmp_path / "b.pt", engine="torch").nouns.words == old_words


def test_a_copy_model_scores_its_candidates_by_its_strongest_classes(tmp_path):
    """--noun-classes n: the candidates and their probabilities count only the classifier's n strongest
    classes, in the decoder and in what the CNN is shown to see, and the checkpoint says so."""
    from captioner.checkpoint import model_payload, save_checkpoint

    feats = torch.randn(B, 1, 1280).relu()
    every, vocab = copy_model()
    strongest, _ = copy_model(noun_classes=2)
    class_probs = strongest.decoder.copy.class_probs(feats)  # (B,C), the same classifier in both
    for model, n in ((every, 0), (strongest, 2)):
        state = model.decoder.init_state(feats)
        top_p, top_i = NOUNS.noun_probs(class_probs, n).topk(4, dim=1)
        assert torch.allclose(state["cand_logp"].exp(), top_p.clamp(min=1e-8), atol=1e-6)
        ids = torch.tensor([[vocab.stoi[NOUNS.words[i]] for i in row] for row in top_i.tolist()])
        assert torch.equal(state["cand_ids"], ids)
    assert not torch.allclose(every.decoder.init_state(feats)["cand_logp"],
                              strongest.decoder.init_state(feats)["cand_logp"])
    save_checkpoint(tmp_path / "m.pt", model_payload(strongest, vocab))
    cap = Captioner.load(tmp_path / "m.pt", engine="torch")
    assert cap.model.cfg.noun_classes == 2 and cap.model.decoder.copy.top_classes == 2
    image = load_image(COCO_MINI_TRAIN_IMAGES / "000000054718.jpg")  # elephants
    shown = cap.caption_detailed([image], max_len=3)[0].candidates
    _, probs = cap.encode(cap._load(image).unsqueeze(0))
    assert shown == NOUNS.candidates(probs, top_classes=2)[0] != NOUNS.candidates(probs)[0]


def test_copy_config_is_validated():
    with pytest.raises(ConfigError, match="do not combine"):
        ModelConfig(copy_nouns=5, tie_weights=True).validate()
    with pytest.raises(ConfigError, match="--concepts .* needs --copy-nouns"):
        ModelConfig(concepts=True).validate()
    with pytest.raises(ConfigError, match="--noun-classes .* needs --copy-nouns"):
        ModelConfig(noun_classes=10).validate()
    with pytest.raises(ConfigError, match="noun_classes must be >= 0"):
        ModelConfig(copy_nouns=5, noun_classes=-1).validate()
    assert ModelConfig.from_dict({"copy_nouns": 5}).noun_classes == 0  # a checkpoint from before: all classes
    with pytest.raises(ConfigError, match="copy_hide"):
        TrainConfig(copy_hide=1.5).validate()
    vocab = Vocabulary(list(SPECIALS) + ["dog"])
    with pytest.raises(ConfigError, match="lacks .* table nouns"):
        build_model(ModelConfig(copy_nouns=5), len(vocab), vocab=vocab)


@pytest.mark.parametrize("concepts", [False, True], ids=["copy", "copy+concepts (the default's architecture)"])
def test_tiny_copy_model_names_an_object_no_training_caption_mentions(tmp_path, feature_cache, concepts):
    """DCC in miniature: no training caption says "elephant"; the CNN sees one; the caption names it."""
    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    keep = [it for it in data.items if not any({"elephant", "elephants"} & set(tokenize(c)) for c in it.captions)]
    held = [it for it in data.items if it not in keep]
    assert [it.image.rsplit("/", 1)[1] for it in held] == ["000000054718.jpg"]
    vocab = Vocabulary.build((c for it in keep for c in it.captions), min_freq=1).extend(NOUNS.words)
    assert vocab.stoi["elephant"] >= vocab.generated  # copy-only: never generated
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, hidden_dim=128, dropout=0.0, copy_nouns=5, concepts=concepts),
                        len(vocab), vocab=vocab)
    cfg = TrainConfig(epochs=25, batch_size=32, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    fit(model, vocab, dataclasses.replace(data, items=keep), None, cfg, str(tmp_path), torch.device("cpu"),
        cache_dir=feature_cache, progress=False, log=lambda msg: None)
    cap = Captioner.load(tmp_path / "last.pt")  # and the checkpoint carries the noun table
    result = cap.caption_detailed([held[0].image], method="greedy")[0]
    assert result.candidates[0].word == "elephant"
    assert "elephant" in result.caption.split() or "elephants" in result.caption.split(), result.caption
    assert Captioner.load(tmp_path / "last.pt").caption([held[0].image], method="greedy") == [result.caption]
