"""Timed captions for long videos: split a video into segments, caption each, write WebVTT / SRT / JSONL.

Segments are fixed windows (`window` seconds; each window's `num_frames` frames sampled uniformly inside
it) or shots (frames sampled at SHOT_FPS; a cut wherever the cosine distance between consecutive frames'
CNN features exceeds a threshold, as in feature-based shot boundary detection). One streaming pass over the
video: frames are decoded by seeking, encoded in small batches, and only per-frame features of the current
segment are kept, so memory does not grow with the video's length. Adjacent segments with the same caption
are merged into one cue.

Shapes: N frames in a batch, P positions, E feature.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import DecodeConfig
from .errors import ConfigError
from .media import iter_frames_at, uniform_times, video_info
from .model import encoder_precision

SHOT_FPS = 2.0  # frames per second sampled to find shot changes
# Cosine distance between consecutive frames' (mean-pooled EfficientNet-Lite0) features that counts as a cut.
# Measured on the shared clips at 2 fps: within a shot 0.01-0.38 (0.3+ only under fast camera motion), across
# the cuts of video9149 0.46-0.70. EfficientNet-Lite2 (the default model's encoder) gives about the same: video9149's
# cuts 0.43-0.65, bigbuckbunny's one shot at most 0.30, carphone's at most 0.09.
SHOT_THRESHOLD = 0.4
MIN_SHOT_S = 1.0  # a shot is never cut shorter than this
MAX_SHOT_S = 20.0  # a long shot is split so each caption stays about what is on screen
SUBTITLE_FORMATS = ("vtt", "srt", "jsonl")


@dataclass
class Segment:
    start: float  # seconds
    end: float
    caption: str
    log_prob: float


def parse_window(text: str) -> float | str:
    """'5s', '5', '2.5s', '1m' -> seconds; 'shots' -> 'shots'. ConfigError names the bad value otherwise."""
    t = text.strip().lower()
    if t == "shots":
        return t
    scale = 60.0 if t.endswith("m") else 1.0
    try:
        seconds = float(t.rstrip("sm")) * scale
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"--segments {text!r}: expected a window length like 5s, 10s or 1m, or 'shots'")
    return seconds


def _windows(duration: float, window: float, num_frames: int) -> tuple[list[float], list[int], list[tuple]]:
    """Sample times, each time's window index, and the windows' (start, end)."""
    times, owner, bounds = [], [], []
    start = 0.0
    while start < duration - 1e-6:
        end = min(start + window, duration)
        times += uniform_times(end - start, num_frames, start)
        owner += [len(bounds)] * num_frames
        bounds.append((start, end))
        start = end
    return times, owner, bounds


def _frame_batches(path: str, times: list[float], transform: Callable, size: int) -> Iterator[torch.Tensor]:
    """The frames at `times`, transformed, in batches (N,3,H,W) of `size`, streamed from the video."""
    frames = []
    for _, img in iter_frames_at(path, times, short_side=getattr(transform, "short_side", None)):
        frames.append(transform(img))
        if len(frames) == size:
            yield torch.stack(frames)
            frames = []
    if frames:
        yield torch.stack(frames)


@torch.no_grad()
def _sampled_features(model, path: str, times: list[float], transform: Callable, device: torch.device,
                      batch: int, progress: bool) -> Iterator[tuple[float, torch.Tensor]]:
    """(wanted time, CNN features (P,E)) per sampled frame, streamed."""
    bar = tqdm(total=len(times), desc="video frames", unit="frame", disable=not progress, leave=False)
    k = 0
    for frames in _frame_batches(path, times, transform, batch):
        with encoder_precision(device):
            feats = model.frame_features(frames.to(device)).float()  # (N,P,E)
        for f in feats:  # each (P,E)
            yield times[k], f
            k += 1
        bar.update(len(frames))
    bar.close()


def _fixed_segments(samples: Iterator[tuple[float, torch.Tensor]], owner: list[int], bounds: list[tuple]
                    ) -> Iterator[tuple[float, float, torch.Tensor]]:
    current: list[torch.Tensor] = []
    seg = 0
    for k, (_, f) in enumerate(samples):
        if owner[k] != seg:
            yield (*bounds[seg], torch.stack(current))
            seg, current = owner[k], []
        current.append(f)
    if current:
        yield (*bounds[seg], torch.stack(current))


def _shot_segments(samples: Iterator[tuple[float, torch.Tensor]], duration: float
                   ) -> Iterator[tuple[float, float, torch.Tensor]]:
    """Cut where consecutive frames differ by more than SHOT_THRESHOLD. A cut is held back until MIN_SHOT_S has
    passed after it: a stronger cut within that time replaces it (camera motion just before a real cut must
    not make the real cut too close to be taken)."""
    buf: list[torch.Tensor] = []  # features (P,E) of the frames since seg_start
    seg_start, prev = 0.0, None
    held = None  # (index into buf, boundary time, distance) of the cut not yet taken
    for t, f in samples:
        v = f.mean(0)  # (E,)
        boundary = t - 0.5 / SHOT_FPS  # halfway between this sampled frame and the one before
        if prev is not None:
            d = 1.0 - float(F.cosine_similarity(v, prev, dim=0))
            if d > SHOT_THRESHOLD and boundary - seg_start >= MIN_SHOT_S and (held is None or d > held[2]):
                held = (len(buf), boundary, d)
        if held is not None and boundary - held[1] >= MIN_SHOT_S:
            yield seg_start, held[1], torch.stack(buf[:held[0]])
            buf, seg_start, held = buf[held[0]:], held[1], None
        elif held is None and boundary - seg_start >= MAX_SHOT_S:
            yield seg_start, boundary, torch.stack(buf)
            buf, seg_start = [], boundary
        buf.append(f)
        prev = v
    if held is not None:
        yield seg_start, held[1], torch.stack(buf[:held[0]])
        buf, seg_start = buf[held[0]:], held[1]
    if buf:
        yield seg_start, duration, torch.stack(buf)


def _segment_features(model, path: str, transform: Callable, device: torch.device, window: float | str,
                      batch: int, progress: bool) -> Iterator[tuple[float, float, torch.Tensor]]:
    """(start, end, per-frame features (n,P,E)) per segment, in order."""
    duration = video_info(path).duration
    if window == "shots":
        times = [(i + 0.5) / SHOT_FPS for i in range(max(1, int(duration * SHOT_FPS)))]
        return _shot_segments(_sampled_features(model, path, times, transform, device, batch, progress), duration)
    times, owner, bounds = _windows(duration, float(window), model.cfg.num_frames)
    return _fixed_segments(_sampled_features(model, path, times, transform, device, batch, progress), owner, bounds)


def caption_segments(captioner, path: str | os.PathLike, cfg: DecodeConfig, window: float | str = 5.0,
                     batch: int = 32, progress: bool = False) -> list[Segment]:
    """Timed captions of one video with a `Captioner` (its encoder and decoding: the path every surface
    takes); see the module docstring. Adjacent equal captions are merged."""
    path = os.fspath(path)
    model, vocab = captioner.model, captioner.vocab
    segments: list[Segment] = []
    pending: list[tuple[float, float, torch.Tensor]] = []

    def flush() -> None:
        feats = torch.stack([model.clip_features(f) for _, _, f in pending])  # (S,P,E) or (S,F,E)
        for (start, end, _), hyps in zip(pending, captioner.decode_features(feats, cfg)):
            segments.append(Segment(round(start, 3), round(end, 3), vocab.decode(hyps[0].tokens), hyps[0].log_prob))
        pending.clear()

    for item in _segment_features(model, path, captioner.transform, captioner.device, window, batch, progress):
        pending.append(item)
        if len(pending) == 8:
            flush()
    if pending:
        flush()
    return merge_repeats(segments)


def merge_repeats(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for s in segments:
        if out and out[-1].caption == s.caption:
            out[-1] = Segment(out[-1].start, s.end, s.caption, max(out[-1].log_prob, s.log_prob))
        else:
            out.append(s)
    return out


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def format_subtitles(segments: list[Segment], fmt: str) -> str:
    """WebVTT (W3C), SubRip (SRT) or JSON lines."""
    if fmt == "vtt":
        cues = [f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.caption}\n" for s in segments]
        return "WEBVTT\n\n" + "\n".join(cues)
    if fmt == "srt":
        return "\n".join(f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.caption}\n"
                         for i, s in enumerate(segments, 1))
    if fmt == "jsonl":
        return "".join(json.dumps({"start": s.start, "end": s.end, "caption": s.caption,
                                   "log_prob": round(s.log_prob, 4)}) + "\n" for s in segments)
    raise ConfigError(f"unknown subtitle format {fmt!r}; choose one of: {', '.join(SUBTITLE_FORMATS)}")
