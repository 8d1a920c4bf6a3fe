"""Reading video with PyAV: a clip is read by seeking, never decoded whole. For each wanted timestamp we seek to
the keyframe before it (unless it is close ahead of where decoding already is) and decode forward to the frame
shown at that time. Only the frames asked for are kept, so memory does not grow with the video's length.
Frames come upright (rotation from the display matrix), in presentation time (VFR included), scaled to the
transform's size during YUV->RGB; every failure is a MediaError naming the file."""
from __future__ import annotations

import bisect
import contextlib
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from PIL import Image

from .errors import MediaError, check_file

# Video frames: 8K UHD is 33 Mpx; a (mutated) header claiming more is refused before any frame is decoded.
MAX_VIDEO_PIXELS = 40_000_000

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
# Decode forward instead of seeking when the next wanted frame is at most this many seconds ahead: a seek lands
# on a keyframe (typically 1-10 s apart) and decodes forward from there anyway.
SEEK_GAP_S = 2.0


def is_video(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


@dataclass
class VideoInfo:
    duration: float  # seconds
    fps: float  # average frame rate (0 if the container does not say)
    width: int
    height: int
    rotation: int  # degrees the frames are turned for display (from the display matrix)


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB, upright
    times: list[float]  # seconds from the start of the clip, one per frame
    info: VideoInfo
    decoded: int  # frames the decoder produced to get these (for tests and benchmarks)


@contextlib.contextmanager
def open_video(path: str | os.PathLike) -> Iterator[tuple["av.container.InputContainer", "av.VideoStream"]]:
    """Open a video file with PyAV; any failure is a MediaError naming the file."""
    import av

    path = check_file(path, "video", "mp4, avi, mov, webm, ...")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: not a readable video ({_av_reason(exc)}); "
                         f"expected mp4, avi, mov, webm, ...") from None
    try:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise MediaError(f"{path}: has no video stream ({kinds}); expected a video file")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > MAX_VIDEO_PIXELS:
            raise MediaError(f"{path}: video frames are {w}x{h} pixels, over the limit of {MAX_VIDEO_PIXELS:,}")
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is ~2x faster on 2 cores
        yield container, stream
    finally:
        container.close()


def _av_reason(exc: Exception) -> str:
    return (getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__)[:120]


def _info(container, stream) -> VideoInfo:
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # av.time_base
    else:
        duration = 0.0
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    ctx = stream.codec_context
    return VideoInfo(duration, fps, ctx.width, ctx.height, 0)


def video_info(path: str | os.PathLike) -> VideoInfo:
    with open_video(path) as (container, stream):
        return _info(container, stream)


def uniform_times(duration: float, num_frames: int, start: float = 0.0) -> list[float]:
    """The centres of `num_frames` equal slices of [start, start + duration): uniform over the clip and never
    its very first or last frame (often black or a fade)."""
    return [start + duration * (i + 0.5) / num_frames for i in range(num_frames)]


def iter_frames_at(path: str | os.PathLike, times: Sequence[float], stats: dict | None = None,
                   short_side: int | None = None, snap: float = 0.0) -> Iterator[tuple[float, Image.Image]]:
    """For each time (seconds from the start, ascending), the frame on screen at that time, upright, as
    (its timestamp, RGB image). Works on presentation timestamps, so variable frame rate is handled; a time
    past the last frame gives the last frame. With `snap` > 0, a time within `snap` seconds of a keyframe
    takes the keyframe instead: it decodes alone, where any other frame needs the frames from the keyframe
    before it (up to several seconds' worth). Frames whose short side is over `short_side` are scaled down
    to it. `stats`, if given, gets "decoded" (frames decoded) and "rotation" (degrees) filled in.
    """
    import av

    path = os.fspath(path)
    times = list(times)
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("times must be ascending")
    stats = stats if stats is not None else {}
    stats.setdefault("decoded", 0)
    with open_video(path) as (container, stream):
        tb = stream.time_base
        origin = float((stream.start_time or 0) * tb) if tb else 0.0
        keyframes = _keyframe_times(stream)
        frames = None
        current = None  # (time, frame) of the last decoded frame at or before the target
        ahead = None  # the decoded frame after `current`, once read
        try:
            for wanted in times:
                target = _snapped(keyframes, origin + wanted, snap, current[0] if current else -math.inf)
                if current is None or target < current[0] or _should_seek(keyframes, current[0], target):
                    container.seek(max(round(target / tb), 0) if tb else 0, stream=stream, backward=True)
                    frames, current, ahead = container.decode(stream), None, None
                while True:  # advance while the next frame starts at or before the target
                    if ahead is None:
                        f = next(frames, None)
                        if f is None:
                            break
                        stats["decoded"] += 1
                        ahead = (float(f.time) if f.time is not None else (current[0] if current else origin), f)
                    if current is not None and ahead[0] > target + 1e-6:
                        break
                    current, ahead = ahead, None
                if current is None:
                    raise MediaError(f"{path}: no decodable video frames")
                stats["rotation"] = int(getattr(current[1], "rotation", 0) or 0) % 360
                yield current[0] - origin, _upright(current[1], stats["rotation"], short_side)
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt video ({_av_reason(exc)})") from None


def _keyframe_times(stream) -> list[float] | None:
    """Keyframe presentation times from the container's index (mp4, mkv, avi have one), or None.

    The index holds decode timestamps; with B-frames a stream's decode clock runs ahead of its presentation
    clock by a fixed delay, visible as the first entry lying before the stream's start, so it is added back."""
    try:
        entries = stream.index_entries
        tb = stream.time_base
        keys = sorted(float(e.timestamp * tb) for e in entries if e.is_keyframe) if entries else []
    except (AttributeError, TypeError):
        keys = []
    if not keys:
        return None
    start = float((stream.start_time or 0) * stream.time_base)
    delay = max(0.0, start - keys[0])
    return [k + delay for k in keys]


def _snapped(keyframes: list[float] | None, target: float, snap: float, after: float) -> float:
    """The keyframe nearest `target` if it is within `snap` seconds and not before `after`, else target."""
    if not keyframes or snap <= 0:
        return target
    i = bisect.bisect_left(keyframes, target)
    near = min(keyframes[max(i - 1, 0): i + 1], key=lambda k: abs(k - target))
    return near if abs(near - target) <= snap and near >= after else target


def _should_seek(keyframes: list[float] | None, now: float, target: float) -> bool:
    """Seeking pays only when a keyframe lies between the frame we are at and the target: decoding must start
    from a keyframe, and from `now` onwards we are already decoding. Without an index, seek on long gaps."""
    if keyframes is None:
        return target - now > SEEK_GAP_S
    i = bisect.bisect_right(keyframes, now)
    return i < len(keyframes) and keyframes[i] <= target


def _upright(frame, rotation: int, short_side: int | None) -> Image.Image:
    w, h = frame.width, frame.height
    if short_side and min(w, h) > short_side:
        scale = short_side / min(w, h)
        img = frame.to_image(width=max(1, round(w * scale)), height=max(1, round(h * scale)), interpolation="AREA")
    else:
        img = frame.to_image()  # RGB
    # PyAV's rotation is the display matrix angle, counter-clockwise, as ffmpeg's autorotate applies it.
    return img.rotate(rotation, expand=True) if rotation else img


def read_video_frames(path: str | os.PathLike, num_frames: int = 16, fps: float | None = None,
                      start: float = 0.0, end: float | None = None, max_frames: int = 512,
                      short_side: int | None = None) -> Clip:
    """Sample frames from [start, end) of a video: `num_frames` uniformly over it (default), or `fps` per second
    (at most `max_frames`). A clip with fewer frames than asked for gives some frames more than once (uniform
    sampling in time repeats the nearest frame), so the result always has the number asked for. Frames are
    scaled down to `short_side` if given (see iter_frames_at)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    info = video_info(path)
    end = info.duration if end is None or (info.duration and end > info.duration) else end
    span = max(end - start, 0.0)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        n = max(1, min(max_frames, int(span * fps)))
        times = [start + (i + 0.5) / fps for i in range(n)]
    else:
        times = uniform_times(span, num_frames, start)
    # A sample may move by up to a quarter of its slice to land on a keyframe: in long videos most samples
    # then decode one frame instead of a GOP's worth, and they stay spread uniformly over the clip.
    snap = 0.25 * span / len(times)
    stats: dict = {}
    got = list(iter_frames_at(path, times, stats, short_side, snap))
    info.rotation = stats.get("rotation", 0)
    return Clip([img for _, img in got], [t for t, _ in got], info, stats["decoded"])
