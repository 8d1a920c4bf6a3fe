"""What the web app shows, apart from Gradio itself (app.py): the UI's decoding controls turned into a
DecodeConfig, the crop the model saw and its attention heatmap, the model card, the caption with the words
the CNN sees marked, video thumbnails and clock times, and the folder the Video tab's subtitle files live in.
No gradio here: these are plain functions, tested without a server."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from .config import DECODE_METHODS, DecodeConfig
from .errors import ConfigError

HEATMAP_SIZE = 384  # px, side of the attention overlay
# Blue -> cyan -> yellow -> red, like the "jet" maps in the attention papers; no matplotlib needed.
_CMAP_X = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_CMAP_RGB = np.array([[0.0, 0.0, 0.55], [0.0, 0.45, 1.0], [0.1, 0.9, 0.7], [1.0, 0.85, 0.0], [0.9, 0.05, 0.0]])


def decode_settings(base: DecodeConfig, method: str, beam_size: Any, num_captions: Any, length_penalty: Any,
                    max_len: Any, temperature: Any) -> tuple[DecodeConfig, list[str]]:
    """The UI's controls -> a valid DecodeConfig, plus notes on what was adjusted (shown as warnings).

    Impossible combinations are clamped rather than refused: the user asked for captions, not a lesson in
    beam search. Out-of-range values are ConfigErrors naming the value."""
    if method not in DECODE_METHODS:
        raise ConfigError(f"unknown decoding method {method!r}; choose one of: {', '.join(DECODE_METHODS)}")
    try:
        k, n, ml = int(beam_size), int(num_captions), int(max_len)
        lp, temp = float(length_penalty), float(temperature)
    except (TypeError, ValueError):
        raise ConfigError("beam size, number of captions and max length must be whole numbers; "
                          "length penalty and temperature numbers") from None
    notes = []
    if method == "greedy" and n != 1:
        notes.append("greedy decoding gives one caption; showing 1 (use beam search or sampling for more)")
        n = 1
    if method == "beam" and n > k:
        notes.append(f"beam size {k} gives at most {k} captions; showing {k}")
        n = k
    cfg = replace(base, method=method, beam_size=k, num_captions=n, length_penalty=lp, max_len=ml,
                  temperature=temp, min_len=min(base.min_len, max(ml, 1)))
    cfg.validate()
    return cfg, notes


def model_view(image: Image.Image, transform, size: int = HEATMAP_SIZE) -> Image.Image:
    """The square the eval transform keeps (media.Preprocess.view: short side resized, then centre-cropped), at
    `size` px. Heatmaps are drawn over this crop, not the whole photo: the attention grid covers only what the
    model saw."""
    return transform.view(image).resize((size, size), Image.BICUBIC)


def attention_overlay(view: Image.Image, alpha: np.ndarray, blend: float = 0.5) -> Image.Image:
    """view (S,S) RGB + one word's attention alpha (P,) over a square h x w grid -> heatmap blended over view.

    The map is scaled to [0, 1] per word (relative attention), upsampled bicubically, coloured, then blended."""
    P = int(alpha.shape[-1])
    side = math.isqrt(P)
    if side * side != P:
        raise ValueError(f"attention over {P} positions is not a square grid")
    grid = alpha.reshape(side, side).astype(np.float32)  # (h,w)
    grid = (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-8)
    heat = np.asarray(Image.fromarray(grid, mode="F").resize(view.size, Image.BICUBIC)).clip(0.0, 1.0)  # (S,S)
    color = np.stack([np.interp(heat, _CMAP_X, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)  # (S,S,3)
    base = np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0
    out = (1.0 - blend) * base + blend * color
    return Image.fromarray((out * 255.0).round().clip(0, 255).astype(np.uint8))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_info_markdown(info: dict[str, Any], decode: DecodeConfig) -> str:
    """Captioner.info -> a Markdown table for the model panel (file name only: no server paths to the web)."""
    mc = info.get("model_config") or {}
    enc = info.get("encoder") or {}
    data = info.get("data") or {}
    layers = mc.get("num_layers", 1)
    tuned = f"fine-tuned last {mc['fine_tune_encoder']} stages" if mc.get("fine_tune_encoder") else "frozen"
    rows = [
        ("Checkpoint", f"`{os.path.basename(str(info.get('checkpoint', '?')))}`"
         + (f", epoch {info['epoch']}" if info.get("epoch") is not None else "")),
        ("Backbone", f"{mc.get('backbone', '?')} ({enc.get('weights_source', 'weights unknown')}, {tuned})"),
        ("Decoder", f"{str(mc.get('rnn', '?')).upper()}, {layers} layer{'s' if layers != 1 else ''}, "
         f"hidden {mc.get('hidden_dim', '?')}, embedding {mc.get('embed_dim', '?')}"),
        ("Attention", "yes: soft attention over the image grid (heatmaps available)" if mc.get("attention")
         else "no (global image vector; no heatmaps)"),
        ("Vocabulary", f"{info.get('vocab_size', '?'):,} words" if isinstance(info.get("vocab_size"), int)
         else "?"),
        ("Copying", f"yes: may copy any of the {mc['copy_nouns']} nouns the CNN sees most, including words no "
         f"training caption has" if mc.get("copy_nouns") else "no (words from the training captions only)"),
    ]
    if data.get("data"):
        what = f"`{os.path.basename(str(data['data']))}`"
        extra = [f"{data['format']} format" if data.get("format") else "",
                 f"split {data['split']}" if data.get("split") else "",
                 f"{data['train_images']:,} images" if isinstance(data.get("train_images"), int) else ""]
        rows.append(("Training data", what + "".join(f", {e}" for e in extra if e)))
    else:
        rows.append(("Training data", "not recorded in this checkpoint"))
    scores = [(k, v) for k, v in _flatten(info.get("scores")) if k and v is not None]
    rows.append(("Scores", ", ".join(f"{k} {_fmt(v)}" for k, v in scores[:12]) if scores
                 else "not recorded in this checkpoint"))
    fluent = info.get("fluent")
    if fluent:
        fc, fd = fluent.get("model_config") or {}, fluent.get("data") or {}
        trained = f" on `{os.path.basename(str(fd['data']))}` alone" if fd.get("data") else ""
        kind = f"fluent {str(fc.get('rnn', '?')).upper()} (hidden {fc.get('hidden_dim', '?')})"
        fused = f" (then the first decoder's, with {decode.fusion:g} x this one's word scores fused in)"
        used = (f"{kind}{trained}: its caption is the one shown unless the CNN is at least {decode.ground_prob:.0%} "
                f"sure of a noun it does not name" + (fused if decode.fusion else ""))
        rows.append(("Second decoder", used if decode.fluent else "present, not used (fluent decoding off)"))
    rows.append(("Default decoding", f"{decode.method}" + (f", beam {decode.beam_size}, length penalty "
                 f"{decode.length_penalty:g}" if decode.method == "beam" else "") + f", max {decode.max_len} words"))
    if info.get("captioner_version"):
        rows.append(("Trained with", f"captioner {info['captioner_version']}"))
    lines = [f"| {k} | {v} |" for k, v in rows]
    return "\n".join([lines[0], "|---|---|", *lines[1:]])  # the checkpoint row doubles as the table's header


def _seen(result) -> dict[str, float] | None:
    """Candidate nouns for gr.Label: what the CNN's ImageNet classifier sees (None: no classifier)."""
    return {c.word: c.prob for c in result.candidates} or None


def marked_caption(caption: str, candidates) -> list[tuple[str, str | None]]:
    """The caption for gr.HighlightedText: words naming what the CNN sees (a candidate noun or its plural;
    in a copy model, the words it can copy) marked "seen"."""
    from .metrics import word_forms

    seen = set().union(*(word_forms(c.word) for c in candidates)) if candidates else set()
    return [(w + " ", "seen" if w in seen else None) for w in caption.split()]


class _SubtitleFiles:
    """Where the Video tab writes its .vtt files before Gradio copies them into its cache: one folder for the
    app, removed at exit; a file older than `keep_s` is removed when the next one is made, so a server that
    runs for months holds only the last hour's (it used to leak a temp folder per request)."""

    def __init__(self, keep_s: float = 3600.0):
        self.keep_s = keep_s
        self.root: str | None = None

    def path(self, name: str) -> str:
        import atexit
        import shutil
        import tempfile
        import time

        if self.root is None or not os.path.isdir(self.root):
            self.root = tempfile.mkdtemp(prefix="captioner-vtt-")
            atexit.register(shutil.rmtree, self.root, True)
        now = time.time()
        for entry in os.scandir(self.root):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > self.keep_s:
                    shutil.rmtree(entry.path)
        return os.path.join(tempfile.mkdtemp(dir=self.root), name)  # a folder per request: names may repeat


def _thumbnail(frame: Image.Image, side: int = 320) -> Image.Image:
    thumb = frame.copy()
    thumb.thumbnail((side, side))
    return thumb


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"
