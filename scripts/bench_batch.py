"""Benchmark: is batch captioning as fast as the fastest encoder forward this CPU offers? (issues 7 and 15)

On real images (default: every image in ../shared/data/coco-mini, repeated by symlink to --files files) it
measures, in one process, with the same checkpoint, batch size and workers, each in files/s:
  (a) encoder forward only: the batch DataLoader (decode + transform in workers) feeding
      torch   the checkpoint's encoder in torch eager (channels_last)
      onnx    the same encoder exported to ONNX, run by a plain ONNX Runtime session
      openvino  the same ONNX graph compiled by OpenVINO (if installed)
  (b) the full batch command: captioner.batch.run_batch (listing, loading, encoding, beam search, writing rows
      with fsync) into a fresh .jsonl, with --engine torch, --engine onnx and --engine openvino (if installed)
and prints the ratios (targets: onnx batch / torch batch >= 2; each graph engine's batch / its own plain
forward >= 0.85, and the auto engine's batch / the fastest forward >= 0.85) and whether every engine wrote the
same captions. Runs alternate --repeats times after one warm-up batch each, each engine's batch right after
its own forward; a ratio is the median of the per-run ratios (this machine's speed drifts from minute to
minute, so ratios of medians taken minutes apart are not trusted), printed with each run's.
Then peak memory: `python -m captioner batch` in a subprocess over --memory-files and 4x as many files;
peak RSS (main process and its reaped workers, from wait4) must not grow with the number of files.

    python scripts/bench_batch.py [--checkpoint assets/default.pt] [--files 512] [--batch-size 32]
        [--workers N] [--beam-size K (default: the checkpoint's own, what `captioner batch` uses)]
        [--repeats 1] [--memory-files 128 (0 = skip)]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import torch

from captioner.batch import iter_inputs, make_loader, model_id, run_batch
from captioner.defaults import default_checkpoint
from captioner.engine import default_onnx_dir, onnx_graph, resolve_engine
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
def encoder_only(cap: Captioner, folder: str, batch_size: int, workers: int, forward=None) -> float:
    """Files/s of listing + decode + transform + CNN, exactly as the batch engine feeds the CNN.
    `forward`: images (b,3,H,W) -> anything; default the captioner's own encoder."""
    forward = forward or (lambda x: cap.model.encode(x.to(cap.device)))
    t0, n = time.perf_counter(), 0
    for batch in make_loader(iter_inputs([folder]), cap.transform, batch_size, workers, cap.device):
        forward(batch.images)
        n += len(batch.paths)
    return n / (time.perf_counter() - t0)


def plain_onnx(cap: Captioner):
    """A bare ONNX Runtime session over the exported graph (default options, all cores)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_graph(cap.model.encoder, default_onnx_dir(), print),
                                   providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})


def plain_openvino(cap: Captioner):
    """The same graph compiled by OpenVINO for the CPU, in f32 (its default on CPUs with bf16 units is bf16,
    0.19 off torch's features), or None if it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(onnx_graph(cap.model.encoder, default_onnx_dir(), print), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled(x.numpy())


def full_batch(cap: Captioner, folder: str, cfg, batch_size: int, workers: int, model: str, tmp: str
               ) -> tuple[float, list[str]]:
    """Files/s of the batch command, and the captions it wrote in order."""
    fd, out = tempfile.mkstemp(suffix=".jsonl", dir=tmp)
    os.close(fd)
    os.unlink(out)
    t0 = time.perf_counter()
    s = run_batch(cap, [folder], out, model=model, cfg=cfg, batch_size=batch_size, workers=workers,
                  progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    assert s.ok == len(os.listdir(folder)) and s.failed == 0, s
    with open(out, encoding="utf-8") as f:
        captions = [json.loads(line)["caption"] for line in f]
    return s.ok / seconds, captions


def paired(num: list[float], den: list[float]) -> str:
    """The median of the runs' own ratios (each from two measurements taken one after the other; a ratio of
    medians would pair measurements taken minutes apart), and those ratios."""
    ratios = [x / y for x, y in zip(num, den)]
    runs = f" (runs: {', '.join(f'{r:.3f}' for r in ratios)})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.3f}{runs}"


def peak_rss_mb(args: list[str]) -> float:
    """Run a command; its peak resident memory (itself and reaped children) in MiB, from wait4."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="default: the installed default model")
    p.add_argument("--images", default=str(DATA / "coco-mini"), help="folder of real images (recursive)")
    p.add_argument("--files", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--beam-size", type=int, default=None, help="default: the checkpoint's (batch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--memory-files", type=int, default=128, help="memory check at N and 4N files; 0 = skip")
    a = p.parse_args(argv)
    a.checkpoint = a.checkpoint or default_checkpoint()

    sources = list(iter_inputs([a.images], IMAGE_EXTENSIONS))
    engines = ["torch", "onnx"] + (["openvino"] if find_spec("openvino") else [])  # openvino: captioner[openvino]
    caps = {e: Captioner.load(a.checkpoint, device=a.device, engine=e) for e in engines}
    auto = resolve_engine("auto", caps["torch"].device)
    cap = caps["torch"]
    a.beam_size = a.beam_size or cap.decode_config.beam_size
    cfg = replace(cap.decode_config, method="beam", beam_size=a.beam_size, num_captions=1)
    model = model_id(a.checkpoint)
    print(f"{len(sources)} real images in {a.images} -> {a.files} files; {a.checkpoint} "
          f"({cap.model.cfg.backbone}, {cap.model.cfg.rnn} {cap.model.cfg.hidden_dim}, vocab {len(cap.vocab)}); "
          f"batch {a.batch_size}, {a.workers} workers, beam {a.beam_size}, device {cap.device}, "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")
    forwards = {"torch": None, "onnx": plain_onnx(cap), "openvino": plain_openvino(cap)}
    forwards = {k: v for k, v in forwards.items() if k == "torch" or v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(sources, a.files, os.path.join(tmp, "images"))
        warm = make_folder(sources, a.batch_size, os.path.join(tmp, "warm"))
        for f in forwards.values():  # first-call costs (oneDNN primitives, graph compilation, page cache)
            encoder_only(cap, warm, a.batch_size, a.workers, f)
        for c in caps.values():
            full_batch(c, warm, cfg, a.batch_size, a.workers, model, tmp)
        enc: dict[str, list[float]] = {k: [] for k in forwards}
        full: dict[str, list[float]] = {k: [] for k in caps}
        captions: dict[str, list[str]] = {}
        for r in range(a.repeats):
            for k, c in caps.items():  # each engine's batch right after its own forward: this machine drifts
                enc[k].append(encoder_only(cap, folder, a.batch_size, a.workers, forwards[k]))
                rate, captions[k] = full_batch(c, folder, cfg, a.batch_size, a.workers, model, tmp)
                full[k].append(rate)
            print(f"  run {r + 1}: " + "  ".join(f"(a) {k} {v[-1]:.1f}" for k, v in enc.items()) + "  "
                  + "  ".join(f"(b) {k} {v[-1]:.1f}" for k, v in full.items()) + " files/s")
        e = {k: statistics.median(v) for k, v in enc.items()}
        b = {k: statistics.median(v) for k, v in full.items()}
        fastest = max(e, key=e.get)
        for k, v in e.items():
            print(f"(a) encoder forward, {k:8s} {v:6.1f} files/s")
        for k, v in b.items():
            print(f"(b) captioner batch, engine {k:8s} {v:6.1f} files/s")
        print(f"onnx batch / torch batch        = {paired(full['onnx'], full['torch'])} (target >= 2)")
        for k in b:
            target = "" if k == "torch" else " (target >= 0.85)"
            print(f"{f'{k} batch / {k} forward':31s} = {paired(full[k], enc[k])}{target}")
        if auto in b:
            best = [max(v[r] for v in enc.values()) for r in range(a.repeats)]  # each run's fastest forward
            print(f"auto engine ({auto}) batch / fastest forward ({fastest} by median) = {paired(full[auto], best)} "
                  f"(target >= 0.85)")
        same = sum(len({captions[k][i] for k in captions}) == 1 for i in range(len(captions["torch"])))
        print(f"same caption from all {len(captions)} engines: {same} of {len(captions['torch'])} files")

        if a.memory_files:
            peaks = []
            for n in (a.memory_files, 4 * a.memory_files):
                sub = make_folder(sources, n, os.path.join(tmp, f"mem{n}"))
                cmd = [sys.executable, "-m", "captioner", "batch", sub, "--out", os.path.join(tmp, f"mem{n}.jsonl"),
                       "--checkpoint", a.checkpoint, "--batch-size", str(a.batch_size), "--workers",
                       str(a.workers), "--beam-size", str(a.beam_size), "--device", a.device, "--quiet"]
                peaks.append(peak_rss_mb(cmd))
                print(f"peak RSS, {n} files: {peaks[-1]:.0f} MiB")
            print(f"peak memory growth from {a.memory_files} to {4 * a.memory_files} files: "
                  f"{peaks[1] - peaks[0]:+.0f} MiB ({100 * (peaks[1] / peaks[0] - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
