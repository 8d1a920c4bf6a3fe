"""Batched image and video encoding, and the on-disk feature cache for frozen encoders.

A frozen CNN gives the same features for the same image every epoch, and the CNN is >90% of the cost of
a CPU training step, so features are computed once and reused across epochs and runs.

Cache layout: <cache_dir>/<key>/<file-id>.pt, one fp16 tensor per file: (P,E) for image models, (F,E) per clip
for video models (see CaptionModel.encode).
  key     = hash of (backbone, weights source and value fingerprint, transform spec, pooled or grid, frames
            per clip, per-frame or averaged, version):
            any change to how features are made lands in a new folder, so stale features are never read.
  file-id = hash of (absolute path, size, mtime): an edited or replaced image is re-encoded.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .atomic import save_tensors
from .media import MediaDataset, WorkerLoader, build_transform, collate_media, media_to
from .model import CaptionModel, encoder_precision

CACHE_VERSION = 2  # 2: large JPEGs decoded at reduced scale (media.load_image)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "captioner", "features")


def cache_key(model: CaptionModel, device: torch.device | None = None) -> str:
    """Names how features are made. The weights are fingerprinted by value, not just by their source: a
    random-init, fine-tuned or file-loaded encoder must never share a cache folder with another."""
    desc = {"backbone": model.cfg.backbone, "weights": model.encoder.weights_source,
            "fingerprint": model.encoder.fingerprint(),
            "transform": model.transform_spec, "pooled": model.encoder.pool, "version": CACHE_VERSION,
            "frames": model.cfg.num_frames, "per_frame": model.cfg.is_video}
    if device is not None and device.type == "cuda":
        desc["precision"] = "fp16 autocast"  # model.encoder_precision: CUDA features are not the CPU's
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _file_id(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


@torch.no_grad()
def encode_images(model: CaptionModel, paths: Sequence[str], device: torch.device, batch_size: int = 32,
                  num_workers: int = 0, cache_dir: str | None = None, progress: bool = True,
                  should_stop: Callable[[], bool] = lambda: False) -> torch.Tensor:
    """Features of every image, in order: (N,P,E) fp16 on the CPU. Reads/writes the cache if `cache_dir`."""
    folder = os.path.join(cache_dir, cache_key(model, device)) if cache_dir else None
    feats: list[torch.Tensor | None] = [None] * len(paths)
    todo = list(range(len(paths)))
    if folder:
        os.makedirs(folder, exist_ok=True)
        todo = []
        for i, p in enumerate(paths):
            f = os.path.join(folder, _file_id(p) + ".pt")
            try:
                feats[i] = torch.load(f, weights_only=True) if os.path.exists(f) else None
            except Exception:  # a cache file cut short by a crash: recompute it
                feats[i] = None
            if feats[i] is None:
                todo.append(i)
    if todo:
        was_training = model.training
        model.eval()
        files = MediaDataset(build_transform(model.transform_spec), model.cfg.num_frames, [paths[i] for i in todo])
        loader = WorkerLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_media,
                              generator=torch.Generator())  # keeps the global RNG (training's) untouched
        bar = tqdm(total=len(todo), desc="encoding images", unit="img", disable=not progress, leave=False)
        for local, media, _ in loader:
            with encoder_precision(device):  # on CUDA the features every surface captions from
                out = model.encode(media_to(media, device)).to("cpu", torch.float16)  # (b,P,E) or (b,F,E)
            for j, f in zip(local, out):
                i = todo[j]
                feats[i] = f.clone()
                if folder:
                    save_tensors(feats[i], os.path.join(folder, _file_id(paths[i]) + ".pt"))
            bar.update(len(local))
            if should_stop():
                raise KeyboardInterrupt
        bar.close()
        model.train(was_training)
    return torch.stack(feats)  # type: ignore[arg-type]


