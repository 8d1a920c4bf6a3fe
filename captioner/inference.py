"""Captioner: load a checkpoint once, caption many images and videos (batched, CPU or CUDA).

    from captioner import Captioner
    cap = Captioner.load("runs/demo/best.pt")
    cap.caption(["photo.jpg", "other.png", "clip.mp4"])   # -> ["a dog runs on the grass", ...]
    cap.caption_detailed(["photo.jpg"], decode=DecodeConfig(method="beam", num_captions=3))
    cap.caption_video("clip.mp4")                          # CaptionResult
    cap.caption_segments("long.mp4", window=5.0)           # timed captions (see segments.py)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import DecodeConfig
from .defaults import resolve_checkpoint
from .decoding import Hypothesis
from .engine import GRAPH_ENGINES, deferred_encoder, remember_source, resolve_engine, use_engine
from .errors import CaptionerError, ConfigError, MediaError
from .fluent import decode_model
from .media import (VIDEO_EXTENSIONS, Clip, build_transform, clip_tensor, is_video, load_media_tensor, media_to,
                    stack_or_list)
from .model import CaptionModel, encoder_precision
from .nouns import Candidate, default_nouns
from .segments import Segment, caption_segments
from .vocab import Vocabulary

ImageInput = "str | os.PathLike | Image.Image | Clip"


@dataclass
class CaptionResult:
    source: str  # file path, or "<image N>" for in-memory images
    captions: list[str] = field(default_factory=list)  # best first
    # One naming in every output (CLI --json, batch rows, the app, Segment): log_prob is the model's
    # log-probability of a caption, score what the search ranked it by (length-normalised).
    log_probs: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # False: cut at max_len before the model ended it
    attention: list[torch.Tensor | None] = field(default_factory=list)  # per caption (words, P), attention models
    # What the CNN sees: ImageNet-derived nouns with probabilities (nouns.py); empty if the encoder has no
    # pretrained classifier.
    candidates: list[Candidate] = field(default_factory=list)
    decoders: list[str | None] = field(default_factory=list)  # per caption, models with two decoders (fluent.py)
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
                 decode: DecodeConfig | None = None, info: dict[str, Any] | None = None, engine: str = "torch"):
        """`engine`: what runs the encoder (engine.py): "torch", "onnx" (ONNX Runtime, CPU), "openvino" (CPU),
        or "auto"."""
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.device = device
        self.decode_config = decode or DecodeConfig()
        self.transform = build_transform(model.transform_spec, train=False)
        self.info = info or {}
        self.engine = use_engine(self.model, engine, device)  # the engine in use: "torch", "onnx" or "openvino"
        # what the CNN sees is named by the copy head's own noun table, if it has one (the one it grounds in)
        copy = self.model.decoder.copy
        self.nouns = copy.nouns if copy is not None else default_nouns()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str = "auto",
             decode: DecodeConfig | None = None, engine: str = "auto") -> "Captioner":
        """Load a checkpoint (default: the installed default model, see defaults.py). `engine="auto"` runs the
        encoder on the CPU from its exported graph (exported once and cached) with ONNX Runtime; torch on CUDA
        (engine.py)."""
        path = resolve_checkpoint(path)
        ckpt = load_checkpoint(path)
        dev = resolve_device(device)
        # Exported before: only the decoder is built in torch (engine.py, "start-up without building the encoder").
        chosen = resolve_engine(engine, dev)
        encoder = deferred_encoder(ckpt, chosen) if chosen in GRAPH_ENGINES else None
        model, vocab = model_from_checkpoint(ckpt, os.fspath(path), encoder=encoder)
        stored = ckpt.get("decode_config")
        default = DecodeConfig.from_dict(stored) if stored else DecodeConfig()
        info = {"checkpoint": os.path.abspath(path), **{k: ckpt.get(k) for k in
                ("model_config", "encoder", "data", "scores", "train_config", "captioner_version", "epoch")},
                "vocab_size": len(vocab)}
        if model.fluent is not None:  # its second decoder (fluent.py): what it is and was trained on
            info["fluent"] = {k: model.fluent.meta.get(k) for k in ("model_config", "data", "epoch")}
        cap = cls(model, vocab, dev, decode or default, info, engine=engine)
        if encoder is None and cap.engine in GRAPH_ENGINES:
            remember_source(ckpt, cap.model.encoder)
        return cap

    def caption(self, inputs: Sequence[ImageInput], batch_size: int = 16, **decode_options) -> list[str]:
        """Best caption per input. Raises MediaError for the first unreadable file."""
        results = self.caption_detailed(inputs, batch_size=batch_size, **decode_options)
        for r in results:
            if r.error:
                raise CaptionerError(r.error)
        return [r.caption for r in results]

    def caption_detailed(self, inputs: Sequence[ImageInput], batch_size: int = 16,
                         decode: DecodeConfig | None = None, **decode_options) -> list[CaptionResult]:
        """One CaptionResult per input (image or video file, PIL image, or media.Clip already read), in
        order. An unreadable file gives a result with `error` set; the other inputs are still captioned.
        `decode_options` override fields of the decoding config."""
        cfg = replace(decode or self.decode_config, **decode_options)
        cfg.validate()
        results = [CaptionResult(_name(x, i)) for i, x in enumerate(inputs)]
        for start in range(0, len(inputs), batch_size):
            chunk = list(range(start, min(start + batch_size, len(inputs))))
            tensors, ok = [], []
            for i in chunk:
                try:
                    tensors.append(self._load(inputs[i]))
                    ok.append(i)
                except CaptionerError as exc:
                    results[i].error = str(exc)
            if ok:
                hyps_list, seen = self.caption_and_see(stack_or_list(tensors), cfg)
                for i, hyps, cands in zip(ok, hyps_list, seen):
                    results[i].candidates = cands
                    results[i].captions = [self.vocab.decode(h.tokens) for h in hyps]
                    results[i].log_probs = [h.log_prob for h in hyps]
                    results[i].scores = [h.score for h in hyps]
                    results[i].finished = [h.finished for h in hyps]
                    results[i].attention = [h.attention for h in hyps]
                    results[i].decoders = [h.decoder for h in hyps]
        return results

    def caption_video(self, path: str | os.PathLike, **decode_options) -> CaptionResult:
        """Caption one video file from its uniformly sampled frames; raises MediaError if it cannot be read."""
        if not is_video(path):
            raise MediaError(f"{path}: not a video file by its extension; expected one of: "
                             f"{', '.join(VIDEO_EXTENSIONS)}")
        result = self.caption_detailed([path], batch_size=1, **decode_options)[0]
        if result.error:
            raise MediaError(result.error)
        return result

    def caption_segments(self, path: str | os.PathLike, window: float | str = 5.0, progress: bool = False,
                         decode: DecodeConfig | None = None, **decode_options) -> list[Segment]:
        """Timed captions of a (long) video: fixed windows of `window` seconds, or "shots" (cut where the
        frames' CNN features change); adjacent windows with the same caption are merged."""
        cfg = replace(decode or self.decode_config, **decode_options)
        cfg.validate()
        return caption_segments(self, path, cfg, window=window, progress=progress)

    def _load(self, x: Any) -> torch.Tensor:
        """An input -> (3,H,W) for images, (F,3,H,W) for videos and clips already read."""
        if isinstance(x, Image.Image):
            return self.transform(x.convert("RGB"))
        if isinstance(x, Clip):
            return clip_tensor(x, self.transform)
        return load_media_tensor(x, self.transform, self.model.cfg.num_frames)

    @torch.no_grad()
    def caption_tensors(self, media: torch.Tensor | list[torch.Tensor],
                        cfg: DecodeConfig | None = None) -> list[list[Hypothesis]]:
        """Preprocessed images (B,3,H,W), clips (B,F,3,H,W) or a list of either -> hypotheses per input."""
        return self.caption_and_see(media, cfg)[0]

    @torch.no_grad()
    def decode_features(self, feats: torch.Tensor, cfg: DecodeConfig | None = None) -> list[list[Hypothesis]]:
        """What the decoder reads, (B,P,E) or (B,F,E) (from the encoder or the feature cache) -> hypotheses per
        item, best first: the decoding half of the one path every surface takes (with a fluent decoder, see
        fluent.py, the rule that picks between its caption and the grounded one)."""
        return decode_model(self.model, feats.to(self.device).float(), self.vocab, cfg or self.decode_config)

    def best_captions(self, feats: torch.Tensor, cfg: DecodeConfig | None = None, batch_size: int = 64,
                      bar: Callable[[int], Any] | None = None) -> list[str]:
        """The best caption text of each row of feats (N,P,E), decoded in batches (evaluation, training's
        validation); `bar(n)` is told each batch's size."""
        out: list[str] = []
        for s in range(0, len(feats), batch_size):
            hyps = self.decode_features(feats[s: s + batch_size], cfg)
            out.extend(self.vocab.decode(h[0].tokens) for h in hyps)
            if bar is not None:
                bar(len(hyps))
        return out

    @torch.no_grad()
    def encode(self, media, classify: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The encoding half of the path: preprocessed images (B,3,H,W), clips (B,F,3,H,W) or a list of either
        -> what the decoder reads (B,P,E) and the CNN's class probabilities (B,C) (None without a classifier,
        or when not asked for: what the CNN sees is shown, never needed to decode). fp16 autocast on CUDA."""
        with encoder_precision(self.device):
            return self.model.encode_and_classify(media_to(media, self.device), classify)

    @torch.no_grad()
    def caption_and_see(self, media, cfg: DecodeConfig | None = None
                        ) -> tuple[list[list[Hypothesis]], list[list[Candidate]]]:
        """The one path from preprocessed inputs to captions (every surface ends here): hypotheses per input,
        and what the CNN sees in it (nouns.py). `encode`, then `decode_features`."""
        feats, class_probs = self.encode(media)  # (B,P,E), (B,C)
        hyps = self.decode_features(feats, cfg)
        seen = (self.nouns.candidates(class_probs.float(), top_classes=self.model.cfg.noun_classes)
                if class_probs is not None else [[] for _ in hyps])
        return hyps, seen


def _name(x: Any, i: int) -> str:
    if isinstance(x, (Image.Image, Clip)):
        return f"<{'image' if isinstance(x, Image.Image) else 'clip'} {i}>"
    return os.fspath(x)
