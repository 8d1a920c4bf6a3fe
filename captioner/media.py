"""Reading images safely, the one preprocessing definition every surface uses, and the one dataset of media
files (video reading is video.py; its names are re-exported here).

`build_transform(spec, train)` is the only place where pixels become tensors: training, evaluation,
the CLI, batch captioning and the app all call it with the transform spec stored in the checkpoint,
so a model never sees differently preprocessed images at test time than at training time (timm's rule).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .errors import CaptionerError, MediaError, check_file
from .video import (MAX_VIDEO_PIXELS, SEEK_GAP_S, VIDEO_EXTENSIONS, Clip, VideoInfo, is_video,  # noqa: F401
                    iter_frames_at, open_video, read_video_frames, uniform_times, video_info)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow warns at 89 Mpx and raises at twice that; we refuse anything over this many pixels outright,
# which is far above any real photo (a 100 Mpx medium-format frame) and far below a decompression bomb.
MAX_IMAGE_PIXELS = 120_000_000

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
    path = check_file(path, "image", "jpg, png, webp, ...")
    try:
        with warnings.catch_warnings():  # Pillow's warning from 89 Mpx on: our own limit, next, decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise MediaError(f"{path}: image is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS:,}")
            if min_side and img.format == "JPEG":  # a no-op for photos under 4x min_side
                img.draft("RGB", (2 * min_side, 2 * min_side))
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)  # forces a full decode, so truncated files fail here
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image; expected jpg, png, webp, bmp, gif or tiff") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"{path}: corrupt or truncated image ({exc})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """An image as a viewer shows it, in 8-bit RGB: transparent parts over white (not over whatever colour the
    file keeps under them, often black), 16-bit samples scaled down from their range (PIL's own conversion
    clips them at 255: a 16-bit grayscale photo would turn white), float samples from [0, 1] if that is their
    range, else clipped to [0, 255]."""
    if img.mode.startswith("I"):  # I;16, I;16B, ... and I (how some readers give 16-bit files)
        img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.nan_to_num(np.round(a * scale)).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


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
        image = image if image.mode == "RGB" else _to_rgb(image)  # PIL inputs as files are read (load_image)
        image = self.augment(self.resized(image)) if self.augment else self.view(image)
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
    threads of their own (ONNX Runtime sessions, OpenVINO models, engine.py). A forked worker inherits the
    parent's garbage; if the worker's garbage collector then frees a dead session, its destructor waits for
    thread-pool threads that do not exist in the child, and the worker hangs for ever (seen in the test suite).
    So the parent collects its garbage and freezes what is left before the workers fork: they never collect it."""

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
