"""Benchmark: decoding/sampling video frames vs encoding them with the CNN, and memory on a long video.

For each clip in ../shared/data/videos and a generated 10-minute 720p video (25 fps, a keyframe every 2 s
as phones and streaming encoders write them), in one run:
  sample   seconds to seek, decode and convert the 16 sampled frames (read_video_frames), best of 3
  encode   seconds for the CNN on those 16 frames (transform + the checkpoint's encoder, channels_last), best of 3
  ratio    sample / encode (target: <= 0.30)
Then, each in a fresh process, the peak resident memory of sampling 16 frames from the 10-minute video and of
timed captions over it (30 s windows) (target: < 1.5 GB), next to the same process without any video.

    python scripts/bench_video.py [--checkpoint CKPT] [--minutes 10] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.defaults import default_checkpoint  # noqa: E402
from captioner.inference import Captioner  # noqa: E402
from captioner.media import read_video_frames  # noqa: E402

VIDEOS = ROOT.parent / "shared" / "data" / "videos"


def make_long_video(path: str, minutes: float, fps: int = 25, size=(1280, 720), gop: int = 50) -> None:
    """A moving colour pattern, h264 if PyAV's FFmpeg has it (else mpeg4)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(path, "w") as c:
        try:
            s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        except Exception:
            s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt, s.gop_size = w, h, "yuv420p", gop
        base = np.zeros((h, w, 3), np.uint8)
        for i in range(int(minutes * 60 * fps)):
            base[..., 0] = (xx + 3 * i) % 256
            base[..., 1] = (yy + 2 * i) % 256
            base[..., 2] = (i // fps * 37) % 256  # a new "scene" colour every second
            for p in s.encode(av.VideoFrame.from_ndarray(base, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def time_clip(cap: Captioner, path: str, frames: int = 16, repeats: int = 3) -> tuple[float, float, int]:
    """Best of `repeats` (the machine is shared and noisy) for sampling and for encoding."""
    sample, encode = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clip = read_video_frames(path, frames, short_side=cap.transform.short_side)
        t1 = time.perf_counter()
        with torch.no_grad():
            batch = torch.stack([cap.transform(f) for f in clip.frames])
            cap.model.frame_features(batch)
        sample.append(t1 - t0)
        encode.append(time.perf_counter() - t1)
    return min(sample), min(encode), clip.decoded


PEAK = """
import resource, sys, time
sys.path.insert(0, {root!r})
from captioner.inference import Captioner
from captioner.media import read_video_frames
what, path, ckpt = sys.argv[1:4]
cap = Captioner.load(ckpt)
if what == "sample":
    clip = read_video_frames(path, 16, short_side=cap.transform.short_side)
elif what == "segments":
    cap.caption_segments(path, 30.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_mb(what: str, path: str, ckpt: str) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK.format(root=str(ROOT)), what, path, ckpt],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--keep", help="folder to keep (and reuse) the generated long video in")
    args = ap.parse_args()
    args.checkpoint = args.checkpoint or default_checkpoint()
    torch.set_num_threads(os.cpu_count() or 1)
    cap = Captioner.load(args.checkpoint, device="cpu")
    folder = args.keep or tempfile.mkdtemp(prefix="bench-video-")
    os.makedirs(folder, exist_ok=True)
    long_path = os.path.join(folder, f"long-{args.minutes:g}min-720p.mp4")
    if not os.path.exists(long_path):
        t = time.perf_counter()
        make_long_video(long_path, args.minutes)
        print(f"generated {long_path} ({os.path.getsize(long_path) / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")

    clips = sorted(str(p) for p in VIDEOS.iterdir() if p.suffix in (".mp4", ".avi")) + [long_path]
    time_clip(cap, clips[0])  # warm-up
    print(f"{'clip':36s} {'sample s':>9s} {'encode s':>9s} {'ratio':>6s} {'decoded':>8s}")
    total_s = total_e = 0.0
    for path in clips:
        s, e, decoded = time_clip(cap, path)
        total_s, total_e = total_s + s, total_e + e
        print(f"{os.path.basename(path):36s} {s:9.3f} {e:9.3f} {s / e:6.2f} {decoded:8d}")
    print(f"{'all clips':36s} {total_s:9.3f} {total_e:9.3f} {total_s / total_e:6.2f}   (target ratio <= 0.30)")
    base = peak_mb("baseline", long_path, args.checkpoint)
    print(f"peak memory of the process with torch, torchvision and the model loaded, no video: {base:.0f} MB")
    for what in ("sample", "segments"):
        peak = peak_mb(what, long_path, args.checkpoint)
        print(f"peak memory, {what} on the {args.minutes:g}-minute 720p video: {peak:.0f} MB "
              f"(+{peak - base:.0f} MB for the video; target < 1536 MB)")


if __name__ == "__main__":
    main()
