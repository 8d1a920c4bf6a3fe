"""CaptionModel = ImageEncoder + CaptionDecoder, built from a ModelConfig.

Shapes: B batch, T steps, V vocab, P positions (1 for models without attention), E feature.
    images (B,3,H,W) --encode--> features (B,P,E) --decoder--> logits (B,T,V)
Models without attention pool the grid to one vector (P=1): that is all they read, and it keeps the
feature cache small.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .decoder import CaptionDecoder, DecoderOutput
from .encoder import ImageEncoder, build_backbone


class CaptionModel(nn.Module):
    def __init__(self, encoder: ImageEncoder, decoder: CaptionDecoder, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.cfg = cfg

    @property
    def transform_spec(self) -> dict:
        return self.encoder.transform

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) -> features (B,P,E). channels_last speeds the CNN up about 2x on CPU."""
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images)

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor, sampling_prob: float = 0.0,
                encoded: bool = True) -> DecoderOutput:
        """Teacher forcing with input tokens (B,T) from features (B,P,E), or from images (B,3,H,W) when
        `encoded` is False (the encoder then gets gradients only if it is being fine-tuned). One forward for
        both, so DistributedDataParallel sees every trained parameter used inside its forward."""
        if not encoded:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder.frozen):
                inputs = self.encode(inputs)  # (B,P,E)
        return self.decoder(inputs.float(), tokens, sampling_prob)


def build_model(cfg: ModelConfig, vocab_size: int, encoder_weights: str | None = None) -> CaptionModel:
    """Rebuild the modules from config. `encoder_weights` overrides cfg.encoder_weights (a checkpoint that
    stores the encoder's own weights builds it with "none" and loads them afterwards)."""
    cfg.validate()
    backbone = build_backbone(cfg.backbone, encoder_weights or cfg.encoder_weights)
    encoder = ImageEncoder(backbone, fine_tune=cfg.fine_tune_encoder, pool=not cfg.attention)
    decoder = CaptionDecoder(vocab_size, encoder.feature_dim, cfg)
    return CaptionModel(encoder, decoder, cfg)
