"""Self-critical sequence training: the advantage and loss arithmetic, and a real tiny model that raises the
CIDEr-D of its own samples; the CLI's --init / --objective checks;
the two stages' learning curves in one plot."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

from captioner.checkpoint import load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint
from captioner.config import ModelConfig, TrainConfig
from captioner.errors import ConfigError
from captioner.metrics import CiderD, cider_d_scores
from captioner.model import build_model
from captioner.nouns import NounSpace, load_table
from captioner.scst import (grounding_credit, policy_loss, sample_captions, self_critical_advantages,
                            training_scorer)
from captioner.training import fit
from captioner.vocab import SPECIALS, Vocabulary, tokenize

from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES


def test_each_sample_is_judged_against_the_mean_of_the_others():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    adv = self_critical_advantages(rewards)
    assert torch.allclose(adv, torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5], [0.0, 0.0, 0.0]]))


def test_policy_loss_weights_each_real_word_by_its_captions_advantage():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # N=2 captions, T=3 steps, V=5
    targets = torch.tensor([[4, 2, 0], [3, 3, 2]])  # first caption: 2 real words then PAD
    adv = torch.tensor([2.0, -1.0])
    loss = policy_loss(logits, targets, adv)
    logp = torch.log_softmax(logits, -1)
    expected = -(2.0 * (logp[0, 0, 4] + logp[0, 1, 2]) - 1.0 * (logp[1, 0, 3] + logp[1, 1, 3] + logp[1, 2, 2])) / 5
    assert torch.allclose(loss, expected)
    loss.backward()  # a step down the loss makes the positive-advantage caption likelier, the other less likely
    assert logits.grad[0, 0, 4] < 0 and logits.grad[1, 0, 3] > 0
    assert torch.all(logits.grad[0, 2] == 0)  # PAD steps get no gradient


def test_corpus_scorer_gives_the_same_cider_d_as_the_metric():
    refs = [[tokenize(r) for r in rs] for rs in (["a dog runs on the grass", "a brown dog running"],
                                                 ["two men ride bikes", "people riding bicycles down a road"],
                                                 ["a plate of food", "a pizza on a table"])]
    hyps = [tokenize(h) for h in ("a dog running on grass", "two people ride bicycles", "a pizza")]
    scorer = CiderD(refs)
    assert [scorer.score(i, h) for i, h in enumerate(hyps)] == pytest.approx(cider_d_scores(refs, hyps))


def test_samples_end_in_eos_when_finished(trained):
    model, vocab = trained["model"], trained["vocab"]
    feats = torch.randn(2, 1, model.encoder.feature_dim)
    rows = sample_captions(model.decoder, feats, vocab, 3, max_len=4)
    assert len(rows) == 6
    for ids in rows:
        assert 1 <= len(ids) <= 5 and vocab.eos_id not in ids[:-1] and vocab.bos_id not in ids
        assert ids[-1] == vocab.eos_id or len(ids) == 4


def test_samples_are_the_models_own_even_where_decoding_would_forbid_the_ending():
    """SCST samples what the model says, "... with a" endings too (the shipped decoding forbids those, but the
    reward must see them to learn anything about them)."""
    vocab = Vocabulary(list(SPECIALS) + ["a"])

    class SaysA:  # scripted: "a", then EOS for sure
        def init_state(self, feats):
            return {"t": torch.zeros(feats.size(0), dtype=torch.long)}

        def step(self, tokens, state):
            logp = torch.full((tokens.size(0), len(vocab)), float("-inf"))
            first = state["t"] == 0
            logp[first, vocab.stoi["a"]] = 0.0
            logp[~first, vocab.eos_id] = 0.0
            return logp, {"t": state["t"] + 1}

    rows = sample_captions(SaysA(), torch.zeros(2, 1, 4), vocab, k=2, max_len=5)
    assert rows == [[vocab.stoi["a"], vocab.eos_id]] * 4


def test_scst_raises_the_cider_of_a_real_models_own_samples(trained, tmp_path, feature_cache):
    """A tiny LSTM trained 10 cross-entropy epochs on 8 real images, then SCST: its sampled captions score
    clearly higher against the references (0.42 -> 0.81 mean CIDEr-D when written)."""
    data, vocab = trained["data"], trained["vocab"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, hidden_dim=128, dropout=0.0), len(vocab))
    xent = TrainConfig(epochs=10, batch_size=8, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    fit(model, vocab, data, data, xent, str(tmp_path / "xent"), torch.device("cpu"), cache_dir=feature_cache,
        progress=False, log=lambda m: None)
    scst = TrainConfig(epochs=15, batch_size=8, lr=5e-3, patience=0, scheduler="none", objective="cider",
                       scst_samples=8, seed=3)
    summary = fit(model, vocab, data, data, scst, str(tmp_path / "scst"), torch.device("cpu"),
                  cache_dir=feature_cache, progress=False, log=lambda m: None)
    rewards = [h["train_cider"] for h in summary["history"]]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.15, rewards
    scorer = training_scorer([it.captions for it in data.items])
    assert scorer.score(0, tokenize(data.items[0].captions[0])) > 1.0  # a reference scores well against its set


def test_scst_resume_mid_epoch_is_exact(trained, tmp_path, feature_cache):
    def run(name, epochs, resume=None, **kw):
        source = resume or load_checkpoint(trained["dir"] / "best.pt")
        model, vocab = model_from_checkpoint(source)
        cfg = TrainConfig(epochs=epochs, batch_size=3, lr=1e-3, patience=0, objective="cider", seed=5)
        summary = fit(model, vocab, trained["data"], trained["data"], cfg, str(tmp_path / name),
                      torch.device("cpu"), resume=resume, cache_dir=feature_cache, progress=False,
                      log=lambda m: None, **kw)
        return model, summary

    straight, summary = run("straight", 2)
    calls = {"n": 0}

    def stop_after_two_batches():
        calls["n"] += 1
        return calls["n"] >= 2

    _, stopped = run("stopped", 2, should_stop=stop_after_two_batches)
    assert stopped["stopped"]
    resumed, summary2 = run("stopped", 2, resume=load_checkpoint(tmp_path / "stopped" / "last.pt"))
    for (name, a), b in zip(straight.decoder.state_dict().items(), resumed.decoder.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [h["train_cider"] for h in summary2["history"]] == pytest.approx(
        [h["train_cider"] for h in summary["history"]], abs=1e-4)


def _train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "captioner.cli", "train", "--data", str(COCO_MINI_TRAIN),
                           "--images", str(COCO_MINI_TRAIN_IMAGES), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("extra,fragment", [
    (["--objective", "cider"], "--objective cider fine-tunes a trained model: give --init CKPT"),
    (["--init", "{ckpt}", "--hidden-dim", "64"], "drop the model flags (hidden_dim)"),
    (["--init", "{ckpt}", "--resume", "{ckpt}"], "not both"),
    (["--init", "{ckpt}", "--objective", "cider", "--scst-samples", "1"], "scst_samples must be >= 2"),
    (["--init", "missing.pt"], "missing.pt: checkpoint file not found"),
])
def test_init_and_objective_mistakes_are_one_line_errors(trained, tmp_path, extra, fragment):
    ckpt = str(trained["dir"] / "best.pt")
    proc = _train("--out", tmp_path / "run", *[a.format(ckpt=ckpt) for a in extra], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_cli_scst_from_init_records_where_it_started(trained, tmp_path, feature_cache):
    proc = _train("--init", trained["dir"] / "best.pt", "--objective", "cider", "--epochs", "1", "--lr", "1e-4",
                  "--batch-size", "16", "--out", tmp_path / "scst", "--cache-dir", feature_cache, "--quiet",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "scst" / "best.pt")
    assert ckpt["train_config"]["objective"] == "cider"
    assert ckpt["data"]["init"]["checkpoint"] == str(trained["dir"] / "best.pt")
    assert ckpt["data"]["init"]["train_config"]["objective"] == "xent"
    assert "train_cider" in ckpt["history"][0] and "train_loss" not in ckpt["history"][0]

    # The two stages' learning curves, one after the other
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "plot", str(trained["dir"]), str(tmp_path / "scst"),
                           "--out", str(png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(png), proc.stderr
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1000
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "plot", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "metrics.jsonl: not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_scst_needs_cached_features(trained, tmp_path):
    """A fine-tuned encoder cannot use the feature cache that SCST samples from: a clear error, before training."""
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=16, fine_tune_encoder=1), len(trained["vocab"]))
    cfg = TrainConfig(epochs=1, objective="cider")
    with pytest.raises(ConfigError, match="--objective cider trains on cached features"):
        fit(model, trained["vocab"], trained["data"], None, cfg, str(tmp_path), torch.device("cpu"),
            progress=False, log=lambda m: None)


def test_cli_trains_a_concept_copy_model_self_critically_with_grounding_and_repetition_rewards(tmp_path,
                                                                                            feature_cache):
    """Copy models (with the LSTM-A concept input) can be fine-tuned by SCST (refused before grounding), with
    the reward's grounding credit and repetition penalty; the reward terms are recorded in the checkpoint."""
    vocab = Vocabulary(list(SPECIALS) + "a dog on the grass".split()).extend(NounSpace(load_table()).words)
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=32, copy_nouns=4, concepts=True), len(vocab),
                        vocab=vocab)
    save_checkpoint(tmp_path / "copy.pt", model_payload(model, vocab))
    proc = _train("--init", tmp_path / "copy.pt", "--objective", "cider", "--epochs", "1", "--batch-size", "16",
                  "--scst-grounding", "1.0", "--scst-repetition", "0.5", "--cache-dir", feature_cache, "--quiet",
                  "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["train_config"]["scst_grounding"] == 1.0 and ckpt["train_config"]["scst_repetition"] == 0.5
    assert ckpt["model_config"]["concepts"] is True
    assert ckpt["history"][0]["train_cider"] >= 0


def test_grounding_credit_pays_for_confident_candidates_and_charges_for_doubted_ones():
    vocab = Vocabulary(list(SPECIALS) + "a dog on the grass".split()).extend(NounSpace(load_table()).words)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=32, copy_nouns=3), len(vocab), vocab=vocab)
    feats = torch.randn(1, 1, model.encoder.feature_dim) * 4
    state = model.decoder.copy.init_state(feats, feats.mean(1), {})
    ids, probs = state["cand_ids"][0].tolist(), state["cand_logp"][0].exp().tolist()
    rows = [[ids[0]], [ids[0], ids[1]], [vocab.stoi["dog"]] if vocab.stoi["dog"] not in ids else []]
    credit = grounding_credit(model.decoder, feats, rows, k=3)
    assert credit.tolist() == pytest.approx([probs[0] - 0.5, probs[0] + probs[1] - 1.0, 0.0], abs=1e-5)
