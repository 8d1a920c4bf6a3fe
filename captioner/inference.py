"""Captioner: load a checkpoint once, caption many images (batched, CPU or CUDA).

    from captioner import Captioner
    cap = Captioner.load("runs/demo/best.pt")
    cap.caption(["photo.jpg", "other.png"])          # -> ["a dog runs on the grass", ...]
    cap.caption_detailed(["photo.jpg"], decode=DecodeConfig(method="beam", num_captions=3))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from PIL import Image

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import DecodeConfig
from .decoding import Hypothesis, decode
from .errors import CaptionerError, ConfigError
from .media import build_transform, load_image
from .model import CaptionModel
from .vocab import Vocabulary

ImageInput = "str | os.PathLike | Image.Image"


@dataclass
class CaptionResult:
    source: str  # file path, or "<image N>" for in-memory images
    captions: list[str] = field(default_factory=list)  # best first
    scores: list[float] = field(default_factory=list)  # the model's log-probabilities of the captions
    ranking: list[float] = field(default_factory=list)  # what the search ranked by (length-normalised)
    finished: list[bool] = field(default_factory=list)  # False: cut at max_len before the model ended it
    attention: list[torch.Tensor | None] = field(default_factory=list)  # per caption (words, P), attention models
    error: str | None = None  # set instead of captions when the input could not be read

    @property
    def caption(self) -> str:
        return self.captions[0] if self.captions else ""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N") from None


class Captioner:
    def __init__(self, model: CaptionModel, vocab: Vocabulary, device: torch.device,
                 decode: DecodeConfig | None = None, info: dict[str, Any] | None = None):
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.device = device
        self.decode_config = decode or DecodeConfig()
        self.transform = build_transform(model.transform_spec, train=False)
        self.info = info or {}

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", decode: DecodeConfig | None = None) -> "Captioner":
        ckpt = load_checkpoint(path)
        model, vocab = model_from_checkpoint(ckpt, os.fspath(path))
        stored = ckpt.get("decode_config")
        default = DecodeConfig.from_dict(stored) if stored else DecodeConfig()
        info = {"checkpoint": os.path.abspath(path), **{k: ckpt.get(k) for k in
                ("model_config", "encoder", "data", "scores", "train_config", "captioner_version", "epoch")},
                "vocab_size": len(vocab)}
        return cls(model, vocab, resolve_device(device), decode or default, info)

    def caption(self, inputs: Sequence[ImageInput], batch_size: int = 16, **decode_options) -> list[str]:
        """Best caption per input. Raises MediaError for the first unreadable file."""
        results = self.caption_detailed(inputs, batch_size=batch_size, **decode_options)
        for r in results:
            if r.error:
                raise CaptionerError(r.error)
        return [r.caption for r in results]

    def caption_detailed(self, inputs: Sequence[ImageInput], batch_size: int = 16,
                         decode: DecodeConfig | None = None, **decode_options) -> list[CaptionResult]:
        """One CaptionResult per input, in order. An unreadable file gives a result with `error` set; the
        other inputs are still captioned. `decode_options` override fields of the decoding config."""
        cfg = replace(decode or self.decode_config, **decode_options)
        cfg.validate()
        results = [CaptionResult(_name(x, i)) for i, x in enumerate(inputs)]
        for start in range(0, len(inputs), batch_size):
            chunk = list(range(start, min(start + batch_size, len(inputs))))
            tensors, ok = [], []
            for i in chunk:
                try:
                    img = inputs[i] if isinstance(inputs[i], Image.Image) else load_image(inputs[i])
                    tensors.append(self.transform(img.convert("RGB")))
                    ok.append(i)
                except CaptionerError as exc:
                    results[i].error = str(exc)
            if ok:
                for i, hyps in zip(ok, self.caption_tensors(torch.stack(tensors), cfg)):
                    results[i].captions = [self.vocab.decode(h.tokens) for h in hyps]
                    results[i].scores = [h.log_prob for h in hyps]
                    results[i].ranking = [h.score for h in hyps]
                    results[i].finished = [h.finished for h in hyps]
                    results[i].attention = [h.attention for h in hyps]
        return results

    @torch.no_grad()
    def caption_tensors(self, images: torch.Tensor, cfg: DecodeConfig | None = None) -> list[list[Hypothesis]]:
        """Preprocessed images (B,3,H,W) -> hypotheses per image."""
        feats = self.model.encode(images.to(self.device))  # (B,P,E)
        return decode(self.model.decoder, feats, self.vocab, cfg or self.decode_config)


def _name(x: Any, i: int) -> str:
    return f"<image {i}>" if isinstance(x, Image.Image) else os.fspath(x)
