"""Reading images safely and the one preprocessing definition every surface uses.

`build_transform(spec, train)` is the only place where pixels become tensors: training, evaluation,
the CLI, batch captioning and the app all call it with the transform spec stored in the checkpoint,
so a model never sees differently preprocessed images at test time than at training time (timm's rule).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from .errors import MediaError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow warns at 89 Mpx and raises at twice that; we refuse anything over this many pixels outright,
# which is far above any real photo (a 100 Mpx medium-format frame) and far below a decompression bomb.
MAX_IMAGE_PIXELS = 120_000_000

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB, honouring EXIF rotation. Raises MediaError naming the file on any failure."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder; expected an image file (caption a folder with `captioner batch`)")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such image file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty; expected an image (jpg, png, webp, ...)")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise MediaError(f"{path}: image is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS:,}")
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


def build_transform(spec: dict[str, Any], train: bool = False) -> T.Compose:
    """PIL image -> normalised float tensor (3, size, size).

    `spec` keys: size, crop_pct, mean, std, interpolation. Eval: resize the short side to size / crop_pct,
    then center-crop. Train: the same resize, then a random crop and mild colour jitter (no horizontal flip:
    it would make "left" and "right" in captions wrong).
    """
    size = int(spec["size"])
    resize = int(round(size / float(spec.get("crop_pct", 1.0))))
    name = spec.get("interpolation", "bilinear")
    if name not in _INTERPOLATION:
        raise ValueError(f"unknown interpolation {name!r}; choose one of: {', '.join(_INTERPOLATION)}")
    interp = _INTERPOLATION[name]
    crop: list = [T.RandomCrop(size), T.ColorJitter(0.1, 0.1, 0.1)] if train else [T.CenterCrop(size)]
    return T.Compose(
        [T.Resize(resize, interpolation=interp), *crop, T.ToTensor(), T.Normalize(spec["mean"], spec["std"])]
    )


def load_image_tensor(path: str | os.PathLike, transform: T.Compose) -> torch.Tensor:
    """Decode and preprocess one image: (3, H, W)."""
    return transform(load_image(path))
