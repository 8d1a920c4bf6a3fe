"""Shared test data and one tiny model trained once per test session on real coco-mini images."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # lets test modules `from conftest import DATA`

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO_MINI_TRAIN = DATA / "coco-mini" / "annotations" / "captions_train2017.json"
COCO_MINI_TRAIN_IMAGES = DATA / "coco-mini" / "train2017"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Caches (features, exported ONNX graphs) in a folder of this test session, never the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, feature_cache):
    """A tiny LSTM overfit on 8 real coco-mini images (all 5 captions each): its run folder, data and summary."""
    from captioner.config import ModelConfig, TrainConfig
    from captioner.datasets import read_captions
    from captioner.model import build_model
    from captioner.training import fit
    from captioner.vocab import Vocabulary

    data = read_captions(str(COCO_MINI_TRAIN), str(COCO_MINI_TRAIN_IMAGES))
    data.items = data.items[:8]
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, hidden_dim=128, dropout=0.0), len(vocab))
    cfg = TrainConfig(epochs=40, batch_size=8, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    out = tmp_path_factory.mktemp("run")
    summary = fit(model, vocab, data, data, cfg, str(out), torch.device("cpu"), cache_dir=feature_cache,
                  progress=False, log=lambda msg: None)
    return {"dir": out, "data": data, "summary": summary, "vocab": vocab, "model": model.eval()}
