"""Training throughput: cached frozen-encoder features vs encoding every image at every step.

Runs, side by side in one process, the same training steps (same model, batch size, captions) twice:
  (a) features from the feature cache (what `captioner train` does with a frozen encoder),
  (b) images decoded, augmented and pushed through the same frozen CNN every step (`--no-cache`),
and prints captions/s for each and the ratio a/b, plus the projected seconds per epoch of the default
recipe (coco2017 train, 11,335 captions) for both.

    python scripts/bench_train.py [--captions 512] [--batch-size 64] [--attention] [--backbone efficientnet_lite2]

The default backbone is the default model's (scripts/train_default.sh). Its second stage, self-critical
training, also runs on cached features; its seconds per epoch are in the run's metrics.jsonl.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioner.config import ModelConfig, TrainConfig
from captioner.datasets import CaptionPairs, collate_pairs, read_captions
from captioner.features import default_cache_dir, encode_images
from captioner.media import build_transform, load_image_tensor
from captioner.model import build_model
from captioner.training import EpochSampler, train_one_epoch
from captioner.vocab import Vocabulary

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2017"
EPOCH_CAPTIONS = 11335  # coco2017 train


def timed_epoch(model, pairs, cfg, cached: bool, workers: int) -> float:
    """Seconds for one pass over `pairs` (after one warm-up batch)."""
    loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=EpochSampler(len(pairs), 0, 0),
                        collate_fn=collate_pairs, num_workers=0 if cached else workers)
    warm = DataLoader(torch.utils.data.Subset(pairs, range(cfg.batch_size)), batch_size=cfg.batch_size,
                      collate_fn=collate_pairs)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    train_one_epoch(model, warm, optimizer, torch.device("cpu"), cfg, cached=cached, progress=False)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, torch.device("cpu"), cfg, cached=cached, progress=False)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=512, help="captions per timed pass")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--attention", action="store_true", help="benchmark the attention decoder")
    p.add_argument("--backbone", default="efficientnet_lite2", help="the frozen encoder (default: the recipe's)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the uncached run")
    args = p.parse_args(argv)

    data = read_captions(str(DATA / "annotations" / "captions_train.json"), str(DATA / "images"))
    items = data.items[: (args.captions + 4) // 5]
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=5)
    model = build_model(ModelConfig(backbone=args.backbone, attention=args.attention, dropout=0.5), len(vocab))
    cfg = TrainConfig(batch_size=args.batch_size)
    paths = [it.image for it in items]
    feats = encode_images(model, paths, torch.device("cpu"), cache_dir=default_cache_dir(), progress=False)
    cached_pairs = CaptionPairs(items, vocab, lambda i: feats[i], cfg.max_len)
    transform = build_transform(model.transform_spec, train=True)
    image_pairs = CaptionPairs(items, vocab, lambda i: load_image_tensor(paths[i], transform), cfg.max_len)
    n = len(cached_pairs)

    t_cached = timed_epoch(model, cached_pairs, cfg, True, args.workers)
    t_images = timed_epoch(model, image_pairs, cfg, False, args.workers)
    print(f"{n} captions, batch {args.batch_size}, {args.backbone}, decoder "
          f"{'with' if args.attention else 'without'} attention, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mode':<28}{'captions/s':>12}{'s/epoch (coco2017 train)':>28}")
    for name, t in (("(a) cached features", t_cached), ("(b) encode images each step", t_images)):
        print(f"{name:<28}{n / t:>12.1f}{EPOCH_CAPTIONS * t / n:>28.1f}")
    print(f"ratio a/b: {t_images / t_cached:.1f}x")


if __name__ == "__main__":
    main()
