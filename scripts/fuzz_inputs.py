"""Seeded mutation fuzzer for every reader a user's file reaches (issue 17, part 3).

Real files from ../shared/data and assets/ (JPEG, PNG, WebP, GIF, BMP made from a real photo, MP4, AVI, WebM
made from a real clip; checkpoints; annotation files in every supported format) are mutated: bit flips,
truncation, byte insertion, zeroed or duplicated ranges, header overwrites and chunk splices from another
file. Each mutated file goes, in a worker process, through
  media        load_image / read_video_frames, then Captioner.caption_detailed
  checkpoints  load_checkpoint + model_from_checkpoint
  datasets     read_captions
and all mutated media once through `captioner batch`. Outcomes:
  captioned / loaded      the reader accepted it
  clean error             a CaptionerError (MediaError, CheckpointError, DatasetError): one line naming the file
  crash                   any other exception (a traceback a user would see)
  hang                    no answer within --timeout seconds (the worker is killed and restarted)
  unnamed error           a clean error whose message does not name the file
  changed weights         a mutated checkpoint that loaded with weights different from the original's
Crashes, hangs, unnamed errors and changed weights must be 0. Also printed: the worker's peak memory (a
mutated header must not make it allocate gigabytes: images are refused over media.MAX_IMAGE_PIXELS, video
frames over video.MAX_VIDEO_PIXELS; a clip is sampled, never read whole, so its claimed duration is harmless).

    python scripts/fuzz_inputs.py [--cases 600] [--seed 0] [--checkpoint CKPT] [--timeout 30] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KINDS = ("media", "checkpoint", "dataset")
BAD = ("crash", "hang", "unnamed error", "changed weights")


# ------------------------------------------------------------------------------------------------ seeds

def media_seeds(folder: str) -> list[str]:
    """Real photos and clips, plus the formats the data lacks made from them (PNG, WebP, GIF, BMP, WebM)."""
    from PIL import Image

    photos = sorted((DATA / "everyday" / "images").glob("*.jpg"))[:3] + [ROOT / "assets" / "examples" / "cat.jpg"]
    seeds = [str(p) for p in photos if p.exists()]
    base = Image.open(seeds[0]).convert("RGB")
    for ext, options in ((".png", {}), (".webp", {"quality": 80}), (".bmp", {})):
        path = os.path.join(folder, f"seed{ext}")
        base.save(path, **options)
        seeds.append(path)
    gif = os.path.join(folder, "seed.gif")
    frames = [base.rotate(a).convert("P") for a in (0, 10, 20)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    seeds.append(gif)
    clips = [ROOT / "assets" / "examples" / "bikes.mp4", DATA / "videos" / "jPBxl9gFqNY_110_117.avi"]
    seeds += [str(c) for c in clips if c.exists()]
    webm = os.path.join(folder, "seed.webm")
    if make_webm(str(clips[0]), webm):
        seeds.append(webm)
    return seeds


def make_webm(source: str, out: str, seconds: float = 1.0) -> bool:
    """A short VP9 (or VP8) WebM re-encoded from a real clip with PyAV; False if no encoder is available."""
    import av

    for codec in ("libvpx-vp9", "libvpx"):
        try:
            with av.open(source) as src, av.open(out, "w") as dst:
                stream = dst.add_stream(codec, rate=10)
                stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
                for frame in src.decode(video=0):
                    if frame.time is not None and frame.time > seconds:
                        break
                    for packet in stream.encode(frame.reformat(320, 180, "yuv420p")):
                        dst.mux(packet)
                for packet in stream.encode():
                    dst.mux(packet)
            return True
        except Exception:  # noqa: BLE001 - this encoder is not in the PyAV build
            continue
    return False


def dataset_seeds(folder: str) -> list[str]:
    """One real annotation file per format: coco-mini's COCO json and the everyday jsonl as shipped, and
    the same coco-mini captions written as Karpathy json, Flickr8k tokens, csv and MSR-VTT json."""
    coco = DATA / "coco-mini" / "annotations" / "captions_val2017.json"
    data = json.loads(coco.read_text())
    names = {im["id"]: im["file_name"] for im in data["images"]}
    caps: dict[str, list[str]] = {}
    for a in data["annotations"][:60]:
        caps.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
    files = {"coco.json": coco.read_text(),
             "karpathy.json": json.dumps({"images": [{"filename": f, "split": "test",
                                                      "sentences": [{"raw": c} for c in cs]}
                                                     for f, cs in caps.items()]}),
             "Flickr8k.token.txt": "".join(f"{f}#{i}\t{c}\n" for f, cs in caps.items() for i, c in enumerate(cs)),
             "captions.csv": "image,caption\n" + "".join(f'{f},"{c}"\n' for f, cs in caps.items() for c in cs),
             "msrvtt.json": json.dumps({"videos": [{"video_id": Path(f).stem, "split": "test"} for f in caps],
                                        "sentences": [{"video_id": Path(f).stem, "caption": c}
                                                      for f, cs in caps.items() for c in cs]})}
    seeds = []
    for name, text in files.items():
        path = os.path.join(folder, name)
        Path(path).write_text(text, encoding="utf-8")
        seeds.append(path)
    everyday = DATA / "everyday" / "captions.jsonl"
    if everyday.exists():
        seeds.append(str(everyday))
    return seeds


# ------------------------------------------------------------------------------------------------ mutations

def mutate(data: bytes, rng: random.Random, other: bytes) -> tuple[str, bytes]:
    """One seeded mutation of `data`: (its name, the new bytes)."""
    b = bytearray(data)
    n = len(b)
    kind = rng.choice(("flip", "flip", "truncate", "insert", "zero", "duplicate", "header", "splice"))
    if kind == "flip":
        for _ in range(rng.randint(1, 32)):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del b[rng.randrange(1, n):]
    elif kind == "insert":
        i = rng.randrange(n)
        b[i:i] = rng.randbytes(rng.randint(1, 4096))
    elif kind == "zero":
        i, k = rng.randrange(n), rng.randint(1, 4096)
        b[i:i + k] = bytes(len(b[i:i + k]))
    elif kind == "duplicate":
        i = rng.randrange(n)
        b[i:i] = b[i:i + rng.randint(1, 65536)]
    elif kind == "header":  # the first bytes, where sizes, counts and offsets live
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(n, 512))
            b[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    else:  # a chunk of another file of the same kind
        j = rng.randrange(len(other))
        chunk = other[j:j + rng.randint(16, 65536)]
        i = rng.randrange(n)
        b[i:i + len(chunk)] = chunk
    return kind, bytes(b)


@dataclass
class Case:
    path: str
    kind: str  # media | checkpoint | dataset
    seed: str  # the real file it came from
    mutation: str
    outcome: str = ""
    message: str = ""


def make_cases(folder: str, n: int, seed: int, checkpoint: str) -> tuple[list[Case], dict[str, list[str]]]:
    rng = random.Random(seed)
    seeds = {"media": media_seeds(folder), "checkpoint": [checkpoint], "dataset": dataset_seeds(folder)}
    share = {"media": 0.6, "checkpoint": 0.15, "dataset": 0.25}
    cases = []
    for kind in KINDS:
        blobs = {p: Path(p).read_bytes() for p in seeds[kind]}
        for i in range(max(1, round(n * share[kind]))):
            src = rng.choice(seeds[kind])
            other = blobs[rng.choice(seeds[kind])]
            mutation, data = mutate(blobs[src], rng, other)
            sub = os.path.join(folder, kind)
            os.makedirs(sub, exist_ok=True)
            name = Path(src).name if kind == "dataset" else f"{i:04d}{Path(src).suffix}"
            path = os.path.join(sub, f"{i:04d}", name) if kind == "dataset" else os.path.join(sub, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).write_bytes(data)
            cases.append(Case(path, kind, src, mutation))
    return cases, seeds


# ------------------------------------------------------------------------------------------------ worker

def worker(checkpoint: str) -> int:
    """Reads cases (json lines) on stdin; answers one json line per case; last, its peak memory."""
    import torch

    from captioner.checkpoint import load_checkpoint, model_from_checkpoint
    from captioner.datasets import read_captions
    from captioner.errors import CaptionerError
    from captioner.inference import Captioner
    from captioner.media import is_video, load_image, read_video_frames

    cap = Captioner.load(checkpoint, device="cpu")
    original = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)[0].decoder.state_dict()
    images = str(DATA / "coco-mini" / "val2017")

    def run(case: dict) -> tuple[str, str]:
        path = case["path"]
        if case["kind"] == "media":
            if is_video(path):
                read_video_frames(path, 8, short_side=cap.transform.short_side)
            else:
                load_image(path, cap.transform.short_side)
            result = cap.caption_detailed([path])[0]
            if result.error:
                raise CaptionerError(result.error)
            return "captioned", result.caption
        if case["kind"] == "checkpoint":
            model, _ = model_from_checkpoint(load_checkpoint(path), path)
            state = model.decoder.state_dict()
            same = state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
            return ("loaded", "same weights") if same else ("changed weights", "loaded with other weights")
        data = read_captions(path, images)
        return "loaded", f"{len(data.items)} items"

    for line in sys.stdin:
        case = json.loads(line)
        try:
            outcome, message = run(case)
        except CaptionerError as exc:
            message = str(exc)
            named = case["path"] in message or os.path.basename(case["path"]) in message
            outcome = "clean error" if named and "\n" not in message else "unnamed error"
        except Exception:  # noqa: BLE001 - what the fuzzer is looking for
            outcome, message = "crash", traceback.format_exc(limit=6)
        print(json.dumps({"outcome": outcome, "message": message[:2000]}), flush=True)
    with open("/proc/self/status") as f:
        peak = next((int(line.split()[1]) for line in f if line.startswith("VmHWM")), 0)
    print(json.dumps({"peak_rss_mb": peak / 1024}), flush=True)
    return 0


def run_cases(cases: list[Case], checkpoint: str, timeout: float) -> float:
    """Feed the cases to worker processes; a case with no answer within `timeout` is a hang (the worker is
    killed, a new one takes the next case). Returns the largest peak RSS of the workers, MiB."""
    peak, todo = 0.0, list(cases)
    while todo:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--checkpoint", checkpoint],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: list[str] = []
        ready = threading.Event()

        def read(stream=proc.stdout, lines=lines, ready=ready) -> None:
            for line in stream:
                lines.append(line)
                ready.set()

        threading.Thread(target=read, daemon=True).start()
        start_up = True
        while todo:
            case = todo[0]
            before = len(lines)
            proc.stdin.write(json.dumps({"path": case.path, "kind": case.kind}) + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + timeout + (120 if start_up else 0)  # the first case loads the model
            while len(lines) == before and time.monotonic() < deadline and proc.poll() is None:
                ready.wait(0.1)
                ready.clear()
            start_up = False
            if len(lines) == before:
                case.outcome = "hang" if proc.poll() is None else "crash"
                case.message = f"no answer in {timeout:.0f} s" if proc.poll() is None else \
                    f"the worker died (exit status {proc.returncode})"
                todo.pop(0)
                proc.kill()
                break
            answer = json.loads(lines[before])
            case.outcome, case.message = answer["outcome"], answer["message"]
            todo.pop(0)
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)
            time.sleep(0.1)
            for line in lines:
                if "peak_rss_mb" in line:
                    peak = max(peak, json.loads(line)["peak_rss_mb"])
    return peak


def run_batch(cases: list[Case], checkpoint: str, folder: str, timeout: float) -> dict:
    """One `captioner batch` over every mutated media file: exit status, tracebacks, rows per file."""
    media = [c.path for c in cases if c.kind == "media"]
    listing = os.path.join(folder, "media.txt")
    Path(listing).write_text("".join(p + "\n" for p in media))
    out = os.path.join(folder, "batch.jsonl")
    proc = subprocess.run([sys.executable, "-m", "captioner", "batch", listing, "--out", out, "--checkpoint",
                           checkpoint, "--quiet"], capture_output=True, text=True, timeout=timeout * len(media) + 300)
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()] if os.path.exists(out) else []
    per_path = Counter(r["path"] for r in rows)
    return {"status": proc.returncode, "traceback": "Traceback" in proc.stderr, "rows": len(rows),
            "files": len(media), "one_row_each": all(per_path[p] == 1 for p in media) and len(per_path) == len(media),
            "captioned": sum(r["error"] is None for r in rows), "errors": sum(r["error"] is not None for r in rows)}


@dataclass
class Report:
    cases: list[Case]
    peak_rss_mb: float
    batch: dict | None = None
    counts: dict = field(default_factory=dict)

    @property
    def problems(self) -> list[Case]:
        return [c for c in self.cases if c.outcome in BAD]

    @property
    def ok(self) -> bool:
        b = self.batch
        batch_ok = b is None or (b["status"] == 0 and not b["traceback"] and b["one_row_each"])
        return not self.problems and batch_ok


def fuzz(n: int = 600, seed: int = 0, checkpoint: str | None = None, timeout: float = 30.0,
         folder: str | None = None, batch: bool = True) -> Report:
    from captioner.defaults import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        folder = folder or tmp
        os.makedirs(folder, exist_ok=True)
        cases, _ = make_cases(folder, n, seed, checkpoint)
        peak = run_cases(cases, checkpoint, timeout)
        report = Report(cases, peak, run_batch(cases, checkpoint, folder, timeout) if batch else None)
    report.counts = {kind: Counter(c.outcome for c in cases if c.kind == kind) for kind in KINDS}
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="model to caption with and to mutate (default: the installed default)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    p.add_argument("--keep", metavar="DIR", help="write the cases here and keep them")
    p.add_argument("--no-batch", dest="batch", action="store_false", help="skip the `captioner batch` run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.checkpoint)
    from captioner import media

    t0 = time.time()
    r = fuzz(a.cases, a.seed, a.checkpoint, a.timeout, a.keep, a.batch)
    print(f"{len(r.cases)} cases (seed {a.seed}) in {time.time() - t0:.0f} s; limits: images "
          f"{media.MAX_IMAGE_PIXELS:,} px, video frames {media.MAX_VIDEO_PIXELS:,} px")
    for kind, counts in r.counts.items():
        print(f"  {kind:10s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if r.batch:
        b = r.batch
        print(f"  batch      exit status {b['status']}, traceback {'yes' if b['traceback'] else 'no'}, "
              f"{b['rows']} rows for {b['files']} files (one each: {'yes' if b['one_row_each'] else 'no'}), "
              f"{b['captioned']} captioned, {b['errors']} errors")
    print("crashes / hangs / unnamed errors / changed weights: "
          + " / ".join(str(sum(c.outcome == k for c in r.cases)) for k in BAD)
          + f"; worker peak memory {r.peak_rss_mb:.0f} MiB")
    for c in r.problems[:20]:
        print(f"\n{c.outcome}: {c.path} ({c.mutation} of {c.seed})\n{c.message}")
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
