"""Benchmark: how long one photo takes, as a user meets it (issue 15). Prints, side by side in one run:
  cold   `captioner caption PHOTO` in a fresh process, wall time (import, model load, encoder, decoding)
  help   `captioner --help` in a fresh process, wall time
  loaded Captioner.caption([photo]) on a model loaded once, per photo (the engine it chose)
  app    one request to a real `captioner serve` on loopback (gradio_client, the image endpoint), per photo
Each is the median of --repeats runs (cold, help) or over --photos photos (loaded, app; after one warm-up).
The issue's targets: cold <= 3 s, help <= 1 s; they are printed beside the numbers, never asserted.

    python scripts/bench_latency.py [--checkpoint CKPT] [--photo assets/examples/cat.jpg] [--repeats 3]
        [--photos 10] [--no-app]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from load_app import IMAGE_ARGS, make_client, start_server, stop_server, wait_until_up  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def loaded_latency(checkpoint: str | None, photos: list[str]) -> tuple[float, str]:
    from captioner.inference import Captioner

    cap = Captioner.load(checkpoint, device="cpu")
    cap.caption([photos[0]])  # warm-up
    times = []
    for p in photos:
        t0 = time.perf_counter()
        cap.caption([p])
        times.append(time.perf_counter() - t0)
    return statistics.median(times), cap.engine


def app_latency(checkpoint: str, photos: list[str]) -> float:
    from gradio_client import handle_file

    with tempfile.TemporaryDirectory() as work:
        proc, url, log = start_server(checkpoint, 1, 8, "cpu", work)
        try:
            wait_until_up(proc, url, log, timeout=180)
            client = make_client(url, timeout=120)
            client.predict(handle_file(photos[0]), *IMAGE_ARGS, api_name="/caption_image")  # warm-up
            times = []
            for p in photos:
                t0 = time.perf_counter()
                client.predict(handle_file(p), *IMAGE_ARGS, api_name="/caption_image")
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
        finally:
            stop_server(proc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="default: the installed default model")
    p.add_argument("--photo", default=str(ROOT / "assets" / "examples" / "cat.jpg"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--photos", type=int, default=10, help="everyday photos for the loaded and app latencies")
    p.add_argument("--no-app", action="store_true")
    a = p.parse_args(argv)
    from captioner.defaults import default_checkpoint

    checkpoint = a.checkpoint or default_checkpoint()
    photos = sorted(str(x) for x in (DATA / "everyday" / "images").glob("*.jpg"))[: a.photos]
    cli = [sys.executable, "-m", "captioner"]
    wall(cli + ["caption", a.photo, "--checkpoint", checkpoint])  # warm-up: page cache, a first ONNX export
    cold = statistics.median(wall(cli + ["caption", a.photo, "--checkpoint", checkpoint]) for _ in range(a.repeats))
    helps = statistics.median(wall(cli + ["--help"]) for _ in range(a.repeats))
    loaded, engine = loaded_latency(checkpoint, photos)
    print(f"{checkpoint}; CPUs {os.cpu_count()}; {a.repeats} cold runs; {len(photos)} photos")
    print(f"captioner caption {os.path.relpath(a.photo, ROOT)} (cold process)  {cold:6.2f} s   (target <= 3 s)")
    print(f"captioner --help (cold process)                   {helps:6.2f} s   (target <= 1 s)")
    print(f"loaded Captioner, one photo ({engine} engine)      {loaded * 1000:6.0f} ms")
    if not a.no_app:
        print(f"app (captioner serve + gradio_client), one photo  {app_latency(checkpoint, photos) * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
