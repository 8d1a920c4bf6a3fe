"""Benchmark: is batch captioning as fast as the CNN? (issue 7, part 6)

On real images (default: every image in ../shared/data/coco-mini, repeated by symlink to --files files) it
measures, in one process, with the same checkpoint, batch size and workers:
  (a) encoder only: the batch DataLoader (decode + transform in workers) + model.encode, no caption decoding
  (b) the full batch command: captioner.batch.run_batch (listing, loading, encoding, beam search, writing rows
      with fsync) into a fresh .jsonl
and prints files/s for both and the ratio b/a (target >= 0.85 at beam size 3 on a 2-core CPU). (a) and (b)
alternate --repeats times after one warm-up batch; the ratio uses the medians.
Then peak memory: `python -m captioner.batch_cli` in a subprocess over --memory-files and 4x as many files;
peak RSS (main process and its reaped workers, from wait4) must not grow with the number of files.

    python scripts/bench_batch.py --checkpoint runs/demo/best.pt [--files 512] [--batch-size 32]
        [--workers N] [--beam-size 3] [--repeats 1] [--memory-files 128 (0 = skip)]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from captioner.batch import iter_inputs, make_loader, model_id, run_batch
from captioner.inference import Captioner
from captioner.media import IMAGE_EXTENSIONS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_folder(sources: list[str], n: int, folder: str) -> str:
    """n symlinks to the source images, cycling through them."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        os.symlink(os.path.abspath(src), os.path.join(folder, f"{i:06d}{os.path.splitext(src)[1].lower()}"))
    return folder


@torch.no_grad()
def encoder_only(cap: Captioner, folder: str, batch_size: int, workers: int) -> float:
    """Files/s of listing + decode + transform + CNN, exactly as the batch engine feeds the CNN."""
    t0, n = time.perf_counter(), 0
    for batch in make_loader(iter_inputs([folder]), cap.transform, batch_size, workers, cap.device):
        cap.model.encode(batch.images.to(cap.device))  # (b,P,E)
        n += len(batch.paths)
    return n / (time.perf_counter() - t0)


def full_batch(cap: Captioner, folder: str, cfg, batch_size: int, workers: int, model: str, tmp: str) -> float:
    fd, out = tempfile.mkstemp(suffix=".jsonl", dir=tmp)
    os.close(fd)
    os.unlink(out)
    t0 = time.perf_counter()
    s = run_batch(cap, [folder], out, model=model, cfg=cfg, batch_size=batch_size, workers=workers,
                  progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    assert s.ok == len(os.listdir(folder)) and s.failed == 0, s
    return s.ok / seconds


def peak_rss_mb(args: list[str]) -> float:
    """Run a command; its peak resident memory (itself and reaped children) in MiB, from wait4."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", default=str(DATA / "coco-mini"), help="folder of real images (recursive)")
    p.add_argument("--files", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--memory-files", type=int, default=128, help="memory check at N and 4N files; 0 = skip")
    a = p.parse_args(argv)

    sources = list(iter_inputs([a.images], IMAGE_EXTENSIONS))
    cap = Captioner.load(a.checkpoint, device=a.device)
    cfg = replace(cap.decode_config, method="beam", beam_size=a.beam_size, num_captions=1)
    model = model_id(a.checkpoint)
    print(f"{len(sources)} real images in {a.images} -> {a.files} files; {a.checkpoint} "
          f"({cap.model.cfg.backbone}, {cap.model.cfg.rnn} {cap.model.cfg.hidden_dim}, vocab {len(cap.vocab)}); "
          f"batch {a.batch_size}, {a.workers} workers, beam {a.beam_size}, device {cap.device}, "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(sources, a.files, os.path.join(tmp, "images"))
        warm = make_folder(sources, a.batch_size, os.path.join(tmp, "warm"))
        encoder_only(cap, warm, a.batch_size, a.workers)  # first-call costs (oneDNN primitives, page cache)
        full_batch(cap, warm, cfg, a.batch_size, a.workers, model, tmp)
        enc, full = [], []
        for r in range(a.repeats):
            enc.append(encoder_only(cap, folder, a.batch_size, a.workers))
            full.append(full_batch(cap, folder, cfg, a.batch_size, a.workers, model, tmp))
            print(f"  run {r + 1}: (a) encoder only {enc[-1]:.1f} files/s   (b) full batch {full[-1]:.1f} files/s")
        a_rate, b_rate = statistics.median(enc), statistics.median(full)
        print(f"(a) encoder only: {a_rate:.1f} files/s\n(b) full batch:   {b_rate:.1f} files/s\n"
              f"ratio b/a = {b_rate / a_rate:.3f} (target >= 0.85)")

        if a.memory_files:
            peaks = []
            for n in (a.memory_files, 4 * a.memory_files):
                sub = make_folder(sources, n, os.path.join(tmp, f"mem{n}"))
                cmd = [sys.executable, "-m", "captioner.batch_cli", sub, "--out", os.path.join(tmp, f"mem{n}.jsonl"),
                       "--checkpoint", a.checkpoint, "--batch-size", str(a.batch_size), "--workers",
                       str(a.workers), "--beam-size", str(a.beam_size), "--device", a.device, "--quiet"]
                peaks.append(peak_rss_mb(cmd))
                print(f"peak RSS, {n} files: {peaks[-1]:.0f} MiB")
            print(f"peak memory growth from {a.memory_files} to {4 * a.memory_files} files: "
                  f"{peaks[1] - peaks[0]:+.0f} MiB ({100 * (peaks[1] / peaks[0] - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
