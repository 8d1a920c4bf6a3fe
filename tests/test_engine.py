"""The graph engines for the encoder (ONNX Runtime, OpenVINO): export, cache reuse and invalidation, equivalence
with torch, auto's choice."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from conftest import COCO_MINI_TRAIN_IMAGES

from captioner.cli import main
from captioner import engine as engine_module
from captioner.engine import GRAPH_ENGINES, RUNNERS, graph_key, resolve_engine, use_engine
from captioner.errors import ConfigError
from captioner.inference import Captioner
from captioner.media import build_transform, load_image_tensor

IMAGES = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[:6]


@pytest.fixture()
def model(trained):
    """A copy of the session's tiny trained model (Lite0 with its real ImageNet weights), free to modify."""
    return copy.deepcopy(trained["model"]).eval()


def real_images(model, n=4):
    transform = build_transform(model.transform_spec)
    return torch.stack([load_image_tensor(p, transform) for p in IMAGES[:n]])  # (n,3,224,224)


AUTO = resolve_engine("auto", torch.device("cpu"))  # ONNX Runtime, a dependency


@pytest.mark.parametrize("engine", GRAPH_ENGINES)
def test_export_is_cached_reused_and_matches_torch(model, tmp_path, engine):
    logs = []
    assert use_engine(model, engine, torch.device("cpu"), str(tmp_path), logs.append) == engine
    assert len(logs) == 1 and "exporting" in logs[0]  # the first use says so, in one line
    cached = list(tmp_path.glob("*.onnx"))
    assert len(cached) == 1 and not list(tmp_path.glob(".tmp*"))
    images = real_images(model)
    with torch.no_grad():
        onnx = model.encoder(images)
        torch_feats = model.encoder.torch_forward(images)
    assert isinstance(model.encoder.runner, RUNNERS[engine])
    assert onnx.shape == torch_feats.shape == (4, 1, 1280)  # pooled: the tiny model has no attention
    assert (onnx - torch_feats).abs().max() < 1e-3

    logs.clear()
    mtime = cached[0].stat().st_mtime_ns
    use_engine(model, "auto", torch.device("cpu"), str(tmp_path), logs.append)
    assert logs == [] and cached[0].stat().st_mtime_ns == mtime  # reused, not exported again


def test_key_changes_with_weights_size_and_layout(model):
    base = graph_key(model.encoder)
    assert graph_key(model.encoder) == base
    resized = copy.deepcopy(model.encoder)
    resized.transform = {**resized.transform, "size": 192}
    assert graph_key(resized) != base
    pooled = copy.deepcopy(model.encoder)
    pooled.pool = False  # the grid instead of the pooled vector
    assert graph_key(pooled) != base
    tuned = copy.deepcopy(model.encoder)
    with torch.no_grad():
        next(tuned.body.parameters()).add_(1e-3)
    assert graph_key(tuned) != base


def test_new_input_size_exports_a_new_graph(model, tmp_path):
    use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), lambda m: None)
    model.encoder.transform = {**model.encoder.transform, "size": 192}
    use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), lambda m: None)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    images = torch.nn.functional.interpolate(real_images(model, 2), size=192)
    with torch.no_grad():
        assert (model.encoder(images) - model.encoder.torch_forward(images)).abs().max() < 1e-3
    model.encoder.pool = False  # the grid an attention model reads
    use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), lambda m: None)
    assert len(list(tmp_path.glob("*.onnx"))) == 3
    with torch.no_grad():
        grid = model.encoder(images)
        assert grid.shape == (2, 36, 1280)
        assert (grid - model.encoder.torch_forward(images)).abs().max() < 1e-3


def test_other_input_sizes_fall_back_to_torch(model, tmp_path):
    use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), lambda m: None)
    odd = torch.randn(1, 3, 160, 200)
    with torch.no_grad():
        assert torch.equal(model.encoder(odd), model.encoder.torch_forward(odd))


def test_captions_identical_across_engines(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the default cache folder, here
    by_torch = Captioner(copy.deepcopy(trained["model"]), trained["vocab"], torch.device("cpu"), engine="torch")
    by_graph = [Captioner(copy.deepcopy(trained["model"]), trained["vocab"], torch.device("cpu"), engine=e)
                for e in ("auto", *GRAPH_ENGINES)]
    assert by_torch.engine == "torch" and [c.engine for c in by_graph] == [AUTO, *GRAPH_ENGINES]
    assert len(list((tmp_path / "captioner" / "onnx").glob("*.onnx"))) == 1  # one graph, next to the feature cache
    for method in ("greedy", "beam"):
        a = by_torch.caption_detailed(IMAGES, method=method)
        for other in by_graph:
            b = other.caption_detailed(IMAGES, method=method)
            assert [r.captions for r in a] == [r.captions for r in b]
            assert [[c.word for c in r.candidates] for r in a] == [[c.word for c in r.candidates] for r in b]


def test_damaged_cached_graph_is_exported_again(model, tmp_path):
    use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), lambda m: None)
    graph = next(tmp_path.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:1000])  # cut short on disk after it was written
    logs = []
    assert use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), logs.append) == "onnx"
    assert any("does not load" in m for m in logs)
    images = real_images(model, 2)
    with torch.no_grad():
        assert (model.encoder(images) - model.encoder.torch_forward(images)).abs().max() < 1e-3


def test_unwritable_cache_still_runs(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    logs = []
    assert use_engine(model, "onnx", torch.device("cpu"), str(blocker / "onnx"), logs.append) == "onnx"
    assert any("could not cache" in m for m in logs)


def test_engine_choice_errors_are_one_line():
    assert resolve_engine("auto", torch.device("cuda")) == "torch"  # torch + AMP stays the GPU path
    for engine in GRAPH_ENGINES:
        with pytest.raises(ConfigError, match="runs the encoder on the CPU"):
            resolve_engine(engine, torch.device("cuda"))
    with pytest.raises(ConfigError, match="unknown engine"):
        resolve_engine("tensorrt", torch.device("cpu"))
    assert AUTO == "onnx"  # a dependency: auto's first choice on the CPU


def test_auto_takes_the_next_engine_where_one_is_missing_or_fails(model, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "_installed", lambda e: e != "onnx")  # as if it were not installed
    assert resolve_engine("auto", torch.device("cpu")) == "openvino"
    with pytest.raises(ConfigError, match=r"needs ONNX Runtime, which is not installed; run: pip install "):
        resolve_engine("onnx", torch.device("cpu"))
    monkeypatch.setattr(engine_module, "_installed", lambda e: e != "openvino")
    with pytest.raises(ConfigError, match=r"needs OpenVINO, which is not installed; run: pip install "
                                          r"'captioner\[openvino\]'"):
        resolve_engine("openvino", torch.device("cpu"))
    monkeypatch.undo()

    class Broken(RUNNERS["onnx"]):
        def __init__(self, graph, encoder):
            raise RuntimeError("no kernel for this machine")

    monkeypatch.setitem(RUNNERS, "onnx", Broken)  # a runtime that cannot run the graph here
    logs = []
    assert use_engine(model, "auto", torch.device("cpu"), str(tmp_path), logs.append) == "openvino"
    assert logs[-1] == ("captioner: ONNX Runtime cannot run this encoder (RuntimeError: no kernel for this "
                        "machine); using OpenVINO")
    with pytest.raises(ConfigError, match="could not run this encoder with ONNX Runtime"):
        use_engine(model, "onnx", torch.device("cpu"), str(tmp_path), logs.append)


def test_export_command_writes_a_graph_that_runs_elsewhere(trained, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "deploy"
    assert main(["export", "--onnx", str(out), "--checkpoint", str(trained["dir"] / "best.pt")]) == 0
    assert capsys.readouterr().out.split() == [str(out / "encoder.onnx"), str(out / "encoder.json")]
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["input"]["shape"] == ["batch", 3, 224, 224] and meta["outputs"]["class_probs"] == ["batch", 1000]
    model = Captioner.load(trained["dir"] / "best.pt", engine="torch").model
    images = real_images(model, 3)
    feats, probs = ort.InferenceSession(str(out / "encoder.onnx")).run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref = model.encoder(images)
        np.testing.assert_allclose(feats, ref.numpy(), atol=1e-3)
        np.testing.assert_allclose(probs, model.encoder.class_probs(ref.mean(1)).numpy(), atol=1e-4)
    assert main(["export", "--onnx", str(out / "encoder.json")]) == 2  # a file, not a folder: one line
    assert "expected a folder" in capsys.readouterr().err


def test_cli_engine_flag(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ckpt = str(trained["dir"] / "best.pt")
    lines = {}
    for engine in ("torch", *GRAPH_ENGINES):
        assert main(["caption", str(IMAGES[0]), "--checkpoint", ckpt, "--engine", engine]) == 0
        lines[engine] = capsys.readouterr().out
    assert len(set(lines.values())) == 1 and lines["torch"].startswith(str(IMAGES[0]))
    assert os.listdir(tmp_path / "captioner" / "onnx")


def test_second_load_builds_only_the_decoder(trained, tmp_path, monkeypatch):
    """Once exported, a checkpoint's encoder is found by the checkpoint alone: no timm, no torchvision."""
    import subprocess
    import sys

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ckpt = trained["dir"] / "best.pt"
    first = Captioner.load(ckpt)
    assert first.engine == AUTO and first.model.encoder.deferred is None
    assert list((tmp_path / "captioner" / "onnx" / "sources").glob("*.json"))
    second = Captioner.load(ckpt)
    assert second.engine == AUTO and second.model.encoder.deferred
    by_torch = Captioner.load(ckpt, engine="torch")
    for a, b in zip(by_torch.caption_detailed(IMAGES), second.caption_detailed(IMAGES)):
        assert a.captions == b.captions and [c.word for c in a.candidates] == [c.word for c in b.candidates]
    code = (f"import sys; from captioner.inference import Captioner; "
            f"c = Captioner.load({str(ckpt)!r}); print(c.caption([{str(IMAGES[0])!r}])[0]); "
            f"print(sorted(m for m in ('timm', 'torchvision', 'nltk', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}).stdout.splitlines()
    assert out == [by_torch.caption([IMAGES[0]])[0], "[]"]
    with pytest.raises(ValueError, match="no torch encoder to save"):
        from captioner.checkpoint import model_payload
        model_payload(second.model, second.vocab)


def test_source_key_follows_the_checkpoint(trained, tmp_path, monkeypatch):
    from captioner.checkpoint import load_checkpoint
    from captioner.engine import deferred_encoder, source_key

    ckpt = load_checkpoint(trained["dir"] / "best.pt")
    key = source_key(ckpt)
    assert key and source_key(ckpt) == key
    assert source_key({**ckpt, "transform": {**ckpt["transform"], "size": 192}}) != key
    state = {k: v.clone() for k, v in trained["model"].encoder.state_dict().items()}
    assert source_key({**ckpt, "encoder_state": state}) != key  # fine-tuned: the stored weights count
    torchvision_weights = {**ckpt, "encoder": {"backbone": "resnet18", "weights_source": "torchvision:resnet18:DEFAULT"}}
    assert source_key(torchvision_weights) is None  # downloaded weights: not pinned down, always built
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    Captioner.load(trained["dir"] / "best.pt")
    entry = next((tmp_path / "captioner" / "onnx" / "sources").glob("*.json"))
    entry.write_text("{not json")  # damaged: the encoder is built again, captions unchanged
    assert deferred_encoder(ckpt, AUTO) is None
    assert Captioner.load(trained["dir"] / "best.pt").model.encoder.deferred is None


def test_workers_forked_beside_dead_onnx_sessions_do_not_hang_or_die(tmp_path):
    """A forked DataLoader worker whose garbage collector freed an inherited, dead ONNX Runtime session hung
    (or died) in its destructor: the suite hung in test_batch. media.WorkerLoader freezes the parent's
    objects before forking; a plain DataLoader died here."""
    import subprocess
    import sys

    script = tmp_path / "fork.py"
    script.write_text(
        "import gc, io, torch\nimport onnxruntime as ort\nfrom captioner.media import WorkerLoader\n"
        "gc.disable()\nbuf = io.BytesIO()\n"
        "torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), buf, dynamo=False)\n"
        "for _ in range(3):\n"
        "    s = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])\n"
        "    s.run(None, {s.get_inputs()[0].name: torch.zeros(1, 3, 8, 8).numpy()})\n"
        "    cycle = {'session': s}\n    cycle['self'] = cycle\n    del s, cycle\n"
        "loader = WorkerLoader(range(4), batch_size=2, num_workers=1, worker_init_fn=lambda _: gc.collect())\n"
        "print(sum(len(b) for b in loader))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "4", proc.stderr[-2000:]
