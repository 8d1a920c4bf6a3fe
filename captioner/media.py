"""Reading images safely and the one preprocessing definition every surface uses.

`build_transform(spec, train)` is the only place where pixels become tensors: training, evaluation,
the CLI, batch captioning and the app all call it with the transform spec stored in the checkpoint,
so a model never sees differently preprocessed images at test time than at training time (timm's rule).
"""
from __future__ import annotations

import bisect
import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .errors import CaptionerError, MediaError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow warns at 89 Mpx and raises at twice that; we refuse anything over this many pixels outright,
# which is far above any real photo (a 100 Mpx medium-format frame) and far below a decompression bomb.
MAX_IMAGE_PIXELS = 120_000_000
# Video frames: 8K UHD is 33 Mpx; a (mutated) header claiming more is refused before any frame is decoded.
MAX_VIDEO_PIXELS = 40_000_000

_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB, honouring EXIF rotation. Raises MediaError naming the file on any failure.

    `min_side`: the short side the caller resizes to next. A JPEG at least four times that in both sides is
    then decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (`Image.draft`: DCT scaling), never below twice
    min_side, so the antialiased resize that follows still does the last 2x or more, as for a COCO-sized
    photo. A 9 Mpx photo decodes 6x faster; decoding right down to min_side was 10x faster but moved the
    features 2.7x further from the same photo at its original size (scripts/bench_jpeg.py)."""
    path = _check_file(path, "image", "jpg, png, webp, ...")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise MediaError(f"{path}: image is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS:,}")
            if min_side and img.format == "JPEG":  # a no-op for photos under 4x min_side
                img.draft("RGB", (2 * min_side, 2 * min_side))
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")  # forces a full decode, so truncated files fail here
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image; expected jpg, png, webp, bmp, gif or tiff") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"{path}: corrupt or truncated image ({exc})") from None


def _check_file(path: str | os.PathLike, kind: str, examples: str) -> str:
    """The path as a str, or a MediaError saying it is a folder, missing or empty."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder; expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} file "
                         f"(caption a folder with `captioner batch`)")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such {kind} file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty; expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({examples})")
    return path


class Preprocess:
    """PIL image -> normalised float tensor (3, size, size), as torchvision's
    Resize(short_side) -> CenterCrop(size) | RandomCrop(size) + ColorJitter -> ToTensor -> Normalize.

    Eval is written out with PIL and torch: on a PIL image those torchvision transforms are exactly a PIL resize
    of the short side, a crop and a division (tests/test_media.py checks the tensors are equal), and captioning
    then does not import torchvision (1.2 s of start-up). Training's random crop and colour jitter are
    torchvision's, imported when a training transform is built. `short_side` also tells the readers how far
    they may scale down while decoding (JPEG draft, video frames scaled by FFmpeg)."""

    def __init__(self, size: int, short_side: int, interpolation: str, mean: Sequence[float], std: Sequence[float],
                 train: bool = False):
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose one of: {', '.join(_INTERPOLATION)}")
        if short_side < size:
            raise ValueError(f"crop_pct must be in (0, 1]: resizing to {short_side} cannot be cropped to {size}")
        self.size, self.short_side, self.interpolation = size, short_side, _INTERPOLATION[interpolation]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = None
        if train:
            from torchvision import transforms as T

            self.augment = T.Compose([T.RandomCrop(size), T.ColorJitter(0.1, 0.1, 0.1)])

    def resized(self, image: Image.Image) -> Image.Image:
        """Short side to `short_side` (the long side rounded down, as torchvision does); antialiased."""
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.short_side * long / short)
        new = (self.short_side, new_long) if w <= h else (new_long, self.short_side)
        return image if new == (w, h) else image.resize(new, self.interpolation)

    def view(self, image: Image.Image) -> Image.Image:
        """The square the model sees at evaluation: resized, then centre-cropped (what heatmaps are drawn on)."""
        image = self.resized(image)
        w, h = image.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.augment(self.resized(image)) if self.augment else self.view(image)
        image = image if image.mode == "RGB" else image.convert("RGB")
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3,H,W)
        return (x.float().div(255) - self.mean) / self.std


def build_transform(spec: dict[str, Any], train: bool = False) -> Preprocess:
    """The transform of a checkpoint's spec: size, crop_pct, mean, std, interpolation. Eval: resize the short
    side to size / crop_pct, then center-crop. Train: the same resize, then a random crop and mild colour
    jitter (no horizontal flip: it would make "left" and "right" in captions wrong)."""
    size = int(spec["size"])
    resize = int(round(size / float(spec.get("crop_pct", 1.0))))
    return Preprocess(size, resize, spec.get("interpolation", "bilinear"), spec["mean"], spec["std"], train)


def load_image_tensor(path: str | os.PathLike, transform: Preprocess) -> torch.Tensor:
    """Decode and preprocess one image: (3, H, W)."""
    return transform(load_image(path, getattr(transform, "short_side", None)))


def load_media_tensor(path: str | os.PathLike, transform: Preprocess, num_frames: int = 16) -> torch.Tensor:
    """An image file -> (3,H,W); a video file (by extension) -> its `num_frames` uniformly sampled frames,
    each through the same transform: (F,3,H,W)."""
    if is_video(path):
        return clip_tensor(read_video_frames(path, num_frames, short_side=getattr(transform, "short_side", None)),
                           transform)
    return load_image_tensor(path, transform)


def clip_tensor(clip: "Clip", transform: Preprocess) -> torch.Tensor:
    """A clip's frames, each through the transform: (F,3,H,W)."""
    return torch.stack([transform(f) for f in clip.frames])


class WorkerLoader(DataLoader):
    """torch's DataLoader, safe to fork worker processes from a process that holds native objects with
    threads of their own (ONNX Runtime sessions, engine.py). A forked worker inherits the parent's garbage;
    if the worker's garbage collector then frees a dead session, its destructor waits for thread-pool
    threads that do not exist in the child, and the worker hangs for ever (seen in the test suite). So the
    parent collects its garbage and freezes what is left before the workers fork: they never collect it."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        import gc

        gc.collect()
        gc.freeze()
        try:
            return super().__iter__()  # the workers are forked here
        finally:
            gc.unfreeze()


class MediaDataset(Dataset):
    """The one dataset of media files, decoded and preprocessed in DataLoader workers (the feature cache,
    batch captioning, training from pixels): dataset[key] -> (key, (3,H,W) image or (F,3,H,W) clip tensor,
    None), where key indexes `paths`, or is the path itself when `paths` is None (a sampler that yields paths:
    batch's streamed listing). errors="return": a file that cannot be read gives (key, None, its one-line
    error) instead of raising, so one bad file never kills a worker or the run."""

    def __init__(self, transform: Preprocess, num_frames: int = 16, paths: Sequence[str] | None = None,
                 errors: str = "raise"):
        assert errors in ("raise", "return")
        self.transform, self.num_frames, self.errors = transform, num_frames, errors
        self.paths = None if paths is None else list(paths)

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else 0

    def tensor(self, key) -> torch.Tensor:
        """The preprocessed tensor alone (errors raised): training's CaptionPairs loads images with it."""
        path = self.paths[key] if self.paths is not None else key
        return load_media_tensor(path, self.transform, self.num_frames)

    def __getitem__(self, key) -> tuple[Any, torch.Tensor | None, str | None]:
        if self.errors == "raise":
            return key, self.tensor(key), None
        path = self.paths[key] if self.paths is not None else key
        try:
            return key, self.tensor(key), None
        except CaptionerError as exc:
            return key, None, " ".join(str(exc).split())
        except Exception as exc:  # noqa: BLE001 - a decoder bug on a hostile file is still that file's problem
            return key, None, " ".join(f"{path}: cannot read ({type(exc).__name__}: {exc})".split())


def collate_media(items: list[tuple[Any, torch.Tensor | None, str | None]]
                  ) -> tuple[list, torch.Tensor | list[torch.Tensor] | None, list[str | None]]:
    """MediaDataset items -> (keys, the tensors that loaded (stack_or_list) or None, errors)."""
    ok = [t for _, t, _ in items if t is not None]
    return [k for k, _, _ in items], stack_or_list(ok) if ok else None, [e for _, _, e in items]


def stack_or_list(tensors: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Batch tensors: one stacked tensor when they all have one shape, else the list (images and clips mixed;
    CaptionModel.encode takes either)."""
    return torch.stack(list(tensors)) if len({t.shape for t in tensors}) == 1 else list(tensors)


def media_to(media: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    return media.to(device) if isinstance(media, torch.Tensor) else [m.to(device) for m in media]


# --- video ------------------------------------------------------------------------------------------------
# A clip is read by seeking, never decoded whole: for each wanted timestamp we seek to the keyframe before it
# (unless it is close ahead of where decoding already is) and decode forward to the frame shown at that time.
# Only the frames asked for are kept, so memory does not grow with the video's length.

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

    path = _check_file(path, "video", "mp4, avi, mov, webm, ...")
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
