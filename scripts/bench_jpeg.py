"""Benchmark: decoding large JPEGs at reduced scale (libjpeg DCT scaling via Image.draft, issue 15 part 2).

Camera photos are 12-50 Mpx; the model reads 260x260. A full decode of such a file costs 10-50x the rest of
its preprocessing. `media.load_image(path, min_side)` lets libjpeg decode at 1/2, 1/4 or 1/8 scale, never
below the transform's short side, then resizes exactly as before.

The data in ../shared/data holds no camera-sized photo (the largest are 640 px), so this script makes them:
each source photo upscaled (Lanczos) by --scale and saved as JPEG quality 92, in a temp folder. An upscaled
photo has less fine detail than a real camera photo of that size, so the feature differences printed here are
a lower bound of what real photos would show; the decode times are representative (they depend on pixels).
Printed side by side, one process: decode+transform ms per photo, full vs draft, and their ratio; the max and
mean absolute feature difference (the checkpoint's encoder) and how many best captions changed.

    python scripts/bench_jpeg.py [--checkpoint CKPT] [--images ../shared/data/everyday] [--scale 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from captioner.batch import iter_inputs
from captioner.inference import Captioner
from captioner.media import IMAGE_EXTENSIONS, load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="default: the installed default model")
    p.add_argument("--images", default=str(DATA / "everyday"))
    p.add_argument("--scale", type=float, default=6.0, help="upscale factor (6: 640 px -> 3840 px, ~10 Mpx)")
    p.add_argument("--limit", type=int, default=30)
    a = p.parse_args(argv)
    cap = Captioner.load(a.checkpoint, device="cpu")
    side = cap.transform.short_side
    sources = list(iter_inputs([a.images], IMAGE_EXTENSIONS))[: a.limit]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, src in enumerate(sources):
            im = load_image(src)
            big = im.resize((round(im.width * a.scale), round(im.height * a.scale)), Image.LANCZOS)
            paths.append(os.path.join(tmp, f"{i:03d}.jpg"))
            big.save(paths[-1], quality=92)
        sizes = [Image.open(x).size for x in paths]
        mpx = sum(w * h for w, h in sizes) / len(sizes) / 1e6
        print(f"{len(paths)} photos from {a.images}, upscaled x{a.scale} (mean {mpx:.1f} Mpx); "
              f"transform short side {side}")
        timing, tensors = {}, {}
        for name, min_side in (("full", None), ("draft", side), ("full", None), ("draft", side)):  # twice: warm
            t0 = time.perf_counter()
            tensors[name] = torch.stack([cap.transform(load_image(x, min_side)) for x in paths])
            timing[name] = (time.perf_counter() - t0) / len(paths) * 1000
        tensors["source"] = torch.stack([cap.transform(load_image(x)) for x in sources])
        with torch.no_grad():
            feats = {k: cap.model.encode(v) for k, v in tensors.items()}  # (N,P,E)
        diff = (feats["full"] - feats["draft"]).abs()
        to_source = {k: (feats[k] - feats["source"]).abs().mean().item() for k in ("full", "draft")}
        captions = {k: [cap.vocab.decode(h[0].tokens) for h in cap.caption_tensors(v)] for k, v in tensors.items()}
        changed = [(f, d) for f, d in zip(captions["full"], captions["draft"]) if f != d]
    print(f"decode + transform per photo: full {timing['full']:.1f} ms, draft {timing['draft']:.1f} ms, "
          f"ratio full/draft = {timing['full'] / timing['draft']:.1f}x")
    print(f"feature difference: max {diff.max():.4f}, mean {diff.mean():.5f} "
          f"(feature mean magnitude {feats['full'].abs().mean():.4f})")
    print(f"mean feature difference to the source photo's (its original size): full {to_source['full']:.5f}, "
          f"draft {to_source['draft']:.5f}")
    same = {k: sum(x == y for x, y in zip(captions[k], captions["source"])) for k in ("full", "draft")}
    print(f"best caption changed for {len(changed)} of {len(paths)} photos; same caption as the source photo's: "
          f"full {same['full']}, draft {same['draft']}")
    for f, d in changed:
        print(f"  full: {f}\n  draft: {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
