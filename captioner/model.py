"""CaptionModel = ImageEncoder + CaptionDecoder, built from a ModelConfig.

Shapes: B batch, T steps, V vocab, P positions (1 for models without attention), E feature, F frames.
    images (B,3,H,W) --encode--> features (B,P,E) --decoder--> logits (B,T,V)
    clips (B,F,3,H,W) --encode--> video model: frame features (B,F,E); image model: mean over frames (B,P,E)
Models without attention pool the grid to one vector (P=1): that is all they read, and it keeps the
feature cache small. An image is a one-frame clip: a video model sees it as a still clip (its one frame
repeated F times), an image model given a video reads the average of its frames' features.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .config import ModelConfig
from .copying import CopyHead
from .decoder import CaptionDecoder, DecoderOutput
from .encoder import ImageEncoder, build_backbone
from .errors import ConfigError
from .nouns import NounSpace, load_table
from .vocab import Vocabulary


class CaptionModel(nn.Module):
    def __init__(self, encoder: ImageEncoder, decoder: CaptionDecoder, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.cfg = cfg
        self.fluent: nn.Module | None = None  # a second, fluent decoder over the same features (fluent.py)

    @property
    def transform_spec(self) -> dict:
        return self.encoder.transform

    def encode(self, media: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """What the decoder reads, from images (B,3,H,W), clips (B,F,3,H,W), or a list of B items each (3,H,W)
        or (F_i,3,H,W) (images and clips mixed). All frames of the batch go through the CNN in one call."""
        return self.encode_and_classify(media, classify=False)[0]

    def encode_and_classify(self, media: torch.Tensor | Sequence[torch.Tensor], classify: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`encode`, plus per input the ImageNet class probabilities (B,C) of the encoder's classifier over
        a clip as the decoder reads it (None if not asked for or the encoder has no classifier): a video model
        reads each frame, so the frames' probabilities are averaged; an image model reads the frames' mean
        feature, whose probabilities (the classifier is linear: its logits are the frames' mean logits) are the
        softmax of the frames' mean log-probabilities. The copy head computes the same from the features."""
        if isinstance(media, torch.Tensor):
            media = list(media)
        clips = [m.unsqueeze(0) if m.dim() == 3 else m for m in media]  # each (F_i,3,H,W)
        sizes = [len(c) for c in clips]
        frame_feats, frame_probs = self.encoder.features_and_probs(torch.cat(clips), classify)  # (N,P,E), (N,C)
        feats = torch.stack([self.clip_features(f) for f in frame_feats.split(sizes)])  # each (F_i,P,E) in
        if frame_probs is None:
            return feats, None
        if self.cfg.is_video:
            return feats, torch.stack([p.mean(0) for p in frame_probs.split(sizes)])  # (B,C)
        return feats, torch.stack([p[0] if len(p) == 1 else torch.softmax(p.clamp(min=1e-30).log().mean(0), dim=-1)
                                   for p in frame_probs.split(sizes)])  # (B,C); a photo's are its own

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """The CNN alone: frames (N,3,H,W) -> (N,P,E)."""
        return self.encoder(frames)

    def clip_features(self, frames: torch.Tensor) -> torch.Tensor:
        """One item's per-frame CNN features (F_i,P,E) -> what the decoder reads: (num_frames,E) for a video
        model (frames resampled uniformly in time to num_frames; a still image repeated), (P,E) otherwise."""
        if not self.cfg.is_video:
            return frames.mean(dim=0)  # (P,E)
        n = self.cfg.num_frames
        index = (torch.arange(n, device=frames.device) * len(frames)) // n  # (n,) nearest earlier frame
        return frames[index, 0]  # (n,E); video models pool each frame (P=1)

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor, sampling_prob: float = 0.0,
                encoded: bool = True, targets: torch.Tensor | None = None, hide_prob: float = 0.0) -> DecoderOutput:
        """Teacher forcing with input tokens (B,T) from features (B,P,E), or from images/clips (see `encode`) when
        `encoded` is False (the encoder then gets gradients only if it is being fine-tuned). One forward for
        both, so DistributedDataParallel sees every trained parameter used inside its forward."""
        if not encoded:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder.frozen):
                inputs = self.encode(inputs)  # (B,P,E)
        return self.decoder(inputs.float(), tokens, sampling_prob, targets, hide_prob)


def encoder_precision(device: torch.device):
    """The one precision policy for running the encoder outside training's own forward (captioning, the feature
    cache, evaluation, video segments): fp16 autocast on CUDA (tensor cores; the decoder and the features it
    reads stay fp32), full precision elsewhere. -> a context manager."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def build_model(cfg: ModelConfig, vocab_size: int, encoder_weights: str | None = None, *,
                vocab: Vocabulary | None = None, copy_table=None, encoder: ImageEncoder | None = None) -> CaptionModel:
    """Rebuild the modules from config. `encoder_weights` overrides cfg.encoder_weights (a checkpoint that
    stores the encoder's own weights builds it with "none" and loads them afterwards). Copy models
    (cfg.copy_nouns) also need the vocabulary (with the nouns appended, see Vocabulary.extend) and the noun
    table (default: the shipped one; a checkpoint passes its own). `encoder`: one already made (engine.py's
    deferred encoder) instead of building the backbone."""
    cfg.validate()
    if encoder is None:
        backbone = build_backbone(cfg.backbone, encoder_weights or cfg.encoder_weights)
        encoder = ImageEncoder(backbone, fine_tune=cfg.fine_tune_encoder, pool=not cfg.attention)
    copy = _copy_head(cfg, encoder, vocab, copy_table) if cfg.copy_nouns else None
    decoder = CaptionDecoder(vocab_size, encoder.feature_dim, cfg, copy)
    return CaptionModel(encoder, decoder, cfg)


def _copy_head(cfg: ModelConfig, encoder: ImageEncoder, vocab: Vocabulary | None, table) -> CopyHead:
    if vocab is None:
        raise ValueError("a copy model needs its vocabulary")
    space = NounSpace(table if table is not None else load_table())
    missing = [w for w in space.words if w not in vocab.stoi]
    if missing:
        raise ConfigError(f"the vocabulary lacks {len(missing)} table nouns (e.g. {missing[0]!r}); "
                          f"extend it with Vocabulary.extend")
    if encoder.head_weight is not None:
        weight, bias = encoder.head_weight, encoder.head_bias
    else:  # only when loading a checkpoint, whose copy buffers then replace these
        weight, bias = torch.zeros(len(space.membership), encoder.feature_dim), torch.zeros(len(space.membership))
    # the gate reads the decoder's clip summary: a recurrent temporal encoder's states, else the mean feature
    summary_dim = (cfg.hidden_dim * (2 if cfg.temporal_bidirectional else 1) if cfg.temporal in ("lstm", "gru")
                   else encoder.feature_dim)
    head = CopyHead(len(vocab), vocab.generated, cfg.hidden_dim, cfg.embed_dim, summary_dim, cfg.copy_nouns,
                    weight, bias, space.membership, torch.tensor([vocab.stoi[w] for w in space.words]),
                    video=cfg.is_video, concepts=cfg.concepts, top_classes=cfg.noun_classes)
    head.nouns = space  # the model's own table, saved with it: the package's may change after it was trained
    return head
