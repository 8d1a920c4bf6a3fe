"""The web app under load: N concurrent gradio_client users against a real `captioner serve` on 127.0.0.1.

Starts `captioner serve` as a subprocess on a free loopback port, takes one single-user answer per distinct good
file (sequentially), then lets `--users` threads send `--requests` requests each at once: real photos
(../shared/data/everyday, coco-mini val2017) to the image endpoint, short real clips (../shared/data/videos) to
the video endpoint, and bad uploads (an empty file, a text file named .jpg, a truncated JPEG, an image over the
app's per-image limit, a video over its upload limit). Every request is one of:
  ok       a caption came back
  refused  a clear user-facing message: the app's gr.Error, Gradio's "queue is full", or the upload limit the
           server advertises (gradio_client refuses the file before sending it)
  failed   anything else: no message, a generic/internal error, a hang past --timeout, a connection error
It prints the counts, p50/p95 latency of the ok requests, the server's peak RSS (with its children), whether
every good answer equals the single-user answer for the same file, and whether the server still answers
afterwards. Exit status 0 only if nothing failed, nothing was unexpected (a bad file captioned, a good file
refused other than by a full queue), all answers were equal and the server still answered.

    python scripts/load_app.py                                    # 8 users x 5 requests, the default model
    python scripts/load_app.py --users 8 --concurrency 1 --max-queue 1   # overflow the queue on purpose
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.app import MAX_UPLOAD_BYTES, MAX_VIDEO_BYTES  # noqa: E402
from captioner.defaults import default_checkpoint  # noqa: E402
from captioner.media import video_info  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
HOST = "127.0.0.1"  # loopback only: a load test never listens on the network
# The endpoints' arguments after the file, as tests/test_app.py sends them (method, beam size, number of
# captions, length penalty, max length, temperature[, timed captions]).
IMAGE_ARGS = ("beam", 3, 3, 1.5, 20, 1.0)
VIDEO_ARGS = ("greedy", 3, 1, 1.5, 20, 1.0, "auto")
# The same settings as Captioner.caption() keywords (what the app's decode_settings makes of them).
IMAGE_SETTINGS = dict(method="beam", beam_size=3, num_captions=3, length_penalty=1.5, max_len=20, temperature=1.0)
VIDEO_SETTINGS = dict(method="greedy", beam_size=3, num_captions=1, length_penalty=1.5, max_len=20, temperature=1.0)
KIND_WEIGHTS = {"image": 3, "video": 1, "bad": 1}  # how often each kind is drawn after the coverage set
# AppError texts that carry no user-facing message: Gradio's "no verbose errors" line, the app's bug line.
NOT_A_MESSAGE = ("The upstream Gradio app has raised an exception", "Internal error while captioning")
LEAKS = ("Traceback", 'File "', "/gradio/")  # server internals a user-facing message must not show
MAX_USERS, MAX_REQUESTS = 64, 100


@dataclass(frozen=True)
class Item:
    """One file to send: which endpoint, whether a caption is expected, a short label."""
    path: str
    kind: str  # "image" or "video": the endpoint
    good: bool
    label: str


@dataclass
class Record:
    item: Item
    user: int
    outcome: str  # "ok", "refused", "failed"
    reason: str = ""  # refused: "app", "queue full", "upload limit"; failed: what went wrong
    caption: str = ""
    message: str = ""
    latency_s: float = 0.0


@dataclass
class Summary:
    checkpoint: str
    users: int
    requests: int
    concurrency: int
    max_queue: int
    single: dict[str, Record] = field(default_factory=dict)  # path -> the single-user answer
    records: list[Record] = field(default_factory=list)  # the concurrent phase
    after: Record | None = None  # one request once the load is over
    peak_rss_mb: float = 0.0  # server + children, VmHWM
    server_rss_mb: float = 0.0
    children_rss_mb: float = 0.0
    server_tracebacks: int = 0
    server_pid: int = 0

    def count(self, outcome: str, reason: str | None = None) -> int:
        return sum(r.outcome == outcome and (reason is None or r.reason == reason) for r in self.records)

    @property
    def failures(self) -> list[Record]:
        return [r for r in [*self.single.values(), *self.records, *([self.after] if self.after else [])]
                if r.outcome == "failed"]

    @property
    def unexpected(self) -> list[Record]:
        """A bad file captioned, or a good file refused by the app (a full queue may refuse anything)."""
        return [r for r in self.records if (r.outcome == "ok" and not r.item.good)
                or (r.outcome == "refused" and r.item.good and r.reason != "queue full")]

    @property
    def mismatches(self) -> list[Record]:
        """ok answers that differ from (or have no) single-user answer for the same file."""
        out = []
        for r in [*self.records, *([self.after] if self.after else [])]:
            ref = self.single.get(r.item.path)
            if r.outcome == "ok" and r.item.good and (ref is None or ref.outcome != "ok" or ref.caption != r.caption):
                out.append(r)
        return out

    @property
    def still_answers(self) -> bool:
        return self.after is not None and self.after.outcome == "ok"

    @property
    def latencies(self) -> list[float]:
        return sorted(r.latency_s for r in self.records if r.outcome == "ok")

    @property
    def passed(self) -> bool:
        return not self.failures and not self.unexpected and not self.mismatches and self.still_answers


# ---------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, concurrency: int, max_queue: int, device: str, workdir: str
                 ) -> tuple[subprocess.Popen, str, str]:
    """`captioner serve` in its own process group, output to a log file -> (process, url, log path)."""
    port = free_port()
    log_path = os.path.join(workdir, "server.log")
    gradio_tmp = os.path.join(workdir, "gradio")  # uploads land here and go with the temp folder
    os.makedirs(gradio_tmp, exist_ok=True)
    env = {**os.environ, "GRADIO_TEMP_DIR": gradio_tmp, "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "captioner.cli", "serve", "--checkpoint", checkpoint, "--host", HOST,
           "--port", str(port), "--device", device, "--concurrency", str(concurrency), "--max-queue", str(max_queue)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(ROOT), start_new_session=True)
    return proc, f"http://{HOST}:{port}/", log_path


def log_tail(log_path: str, lines: int = 15) -> str:
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_until_up(proc: subprocess.Popen, url: str, log_path: str, timeout: float) -> None:
    """Poll the app's config route until it answers; RuntimeError with the log's tail if it exits or never does."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before answering:\n"
                               f"{log_tail(log_path)}")
        try:
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer at {url} within {timeout:g} s:\n{log_tail(log_path)}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(server, its live children) peak resident memory in MB, from /proc/<pid>/status VmHWM."""
    def hwm(p: int) -> float:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0
    return hwm(pid), sum(hwm(c) for c in _descendants(pid))


# ---------------------------------------------------------------- what to send

def good_files(data: Path, max_clip_s: float) -> tuple[list[Item], list[Item]]:
    """Real photos and the real clips no longer than max_clip_s seconds."""
    photos = sorted([*(data / "everyday" / "images").glob("*.jpg"), *(data / "coco-mini" / "val2017").glob("*.jpg")])
    clips = []
    for p in sorted((data / "videos").iterdir()) if (data / "videos").is_dir() else []:
        if p.suffix.lower() in (".mp4", ".avi", ".webm", ".mov", ".mkv"):
            try:
                if video_info(p).duration <= max_clip_s:
                    clips.append(p)
            except Exception:  # an unreadable clip is simply not used
                continue
    if not photos:
        raise RuntimeError(f"no photos under {data}/everyday/images or {data}/coco-mini/val2017")
    return ([Item(str(p), "image", True, p.name) for p in photos],
            [Item(str(p), "video", True, p.name) for p in clips])


def make_bad_uploads(folder: str, photo: str) -> list[Item]:
    """Files the app must refuse with a message; the oversize ones are sparse (no disk, no time)."""
    paths = {name: os.path.join(folder, name) for name in
             ("empty.jpg", "notes.jpg", "truncated.jpg", "oversize.jpg", "oversize.mp4")}
    Path(paths["empty.jpg"]).write_bytes(b"")
    Path(paths["notes.jpg"]).write_text("this is a text file, not a photo\n")
    data = Path(photo).read_bytes()
    Path(paths["truncated.jpg"]).write_bytes(data[: int(len(data) * 0.4)])
    for name, size in (("oversize.jpg", MAX_UPLOAD_BYTES + 2**20), ("oversize.mp4", MAX_VIDEO_BYTES + 2**20)):
        with open(paths[name], "wb") as f:
            f.truncate(size)
    return [Item(paths["empty.jpg"], "image", False, "empty file"),
            Item(paths["notes.jpg"], "image", False, "text file named .jpg"),
            Item(paths["truncated.jpg"], "image", False, "truncated JPEG (40%)"),
            Item(paths["oversize.jpg"], "image", False, "image over the per-image limit"),
            Item(paths["oversize.mp4"], "video", False, "video over the upload limit")]


def make_plan(photos: list[Item], clips: list[Item], bad: list[Item], users: int, requests: int,
              seed: int) -> list[list[Item]]:
    """users lists of `requests` items: every bad kind and one clip first (if room), the rest drawn by
    KIND_WEIGHTS, shuffled and dealt out. Seeded: the same arguments give the same plan."""
    rng = random.Random(seed)
    total = users * requests
    pools = {"image": photos, "video": clips, "bad": bad}
    items = [*bad, *([rng.choice(clips)] if clips else [])][:total]
    kinds = [k for k, w in KIND_WEIGHTS.items() for _ in range(w) if pools[k]]
    while len(items) < total:
        items.append(rng.choice(pools[rng.choice(kinds)]))
    rng.shuffle(items)
    return [items[u * requests:(u + 1) * requests] for u in range(users)]


# ---------------------------------------------------------------- one request

def make_client(url: str, timeout: float):
    from gradio_client import Client

    # download_files=False: outputs stay on the server (only the caption is compared)
    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": timeout})


def send(client, item: Item, user: int, timeout: float) -> Record:
    """One request, classified."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    rec = Record(item, user, "failed")
    args, api = (IMAGE_ARGS, "/caption_image") if item.kind == "image" else (VIDEO_ARGS, "/caption_video")
    start = time.perf_counter()
    job = None
    try:
        job = client.submit(handle_file(item.path), *args, api_name=api)
        out = job.result(timeout=timeout)
        caption = out[0] if isinstance(out, (list, tuple)) and out else out
        if isinstance(caption, str) and caption.strip():
            rec.outcome, rec.caption = "ok", caption
        else:
            rec.reason = f"no caption in the answer: {caption!r}"
    except concurrent.futures.TimeoutError:
        rec.reason = f"no answer within {timeout:g} s"
        if job is not None:
            job.cancel()
    except QueueError as exc:
        rec.outcome, rec.reason, rec.message = "refused", "queue full", str(exc)
    except AppError as exc:
        rec.message = str(exc.message or "")
        if not rec.message.strip() or rec.message.startswith(NOT_A_MESSAGE):
            rec.reason = "error without a user-facing message"
        elif any(s in rec.message for s in LEAKS):
            rec.reason = "the message shows server internals"
        else:
            rec.outcome, rec.reason = "refused", "app"
    except ValueError as exc:  # gradio_client checks the server's advertised max_file_size before uploading
        rec.message = str(exc)
        if "exceeds the maximum file size" in rec.message:
            rec.outcome, rec.reason = "refused", "upload limit"
        else:
            rec.reason = f"ValueError: {exc}"
    except Exception as exc:  # connection errors, protocol errors, anything
        rec.reason, rec.message = f"{type(exc).__name__}", str(exc)
    rec.latency_s = time.perf_counter() - start
    return rec


def _user(url: str, user: int, items: list[Item], timeout: float, barrier: threading.Barrier,
          out: list[Record]) -> None:
    try:
        client = make_client(url, timeout)
    except Exception as exc:
        client, reason = None, f"could not connect: {type(exc).__name__}: {exc}"
    try:
        barrier.wait(timeout=timeout)  # everyone starts at once
    except threading.BrokenBarrierError:
        pass
    for item in items:
        out.append(send(client, item, user, timeout) if client is not None
                   else Record(item, user, "failed", reason))


# ---------------------------------------------------------------- the run

def run_load(checkpoint: str | None = None, users: int = 8, requests: int = 5, concurrency: int = 2,
             max_queue: int = 32, seed: int = 0, timeout: float = 120.0, startup_timeout: float = 180.0,
             device: str = "auto", data: str | os.PathLike = DATA, max_clip_s: float = 10.0,
             log=print) -> Summary:
    """Start the server, take single-user answers, run the concurrent phase, check it still answers, stop it."""
    if not (1 <= users <= MAX_USERS and 1 <= requests <= MAX_REQUESTS):
        raise ValueError(f"users must be in 1..{MAX_USERS} and requests in 1..{MAX_REQUESTS}")
    checkpoint = str(checkpoint or default_checkpoint())
    summary = Summary(checkpoint, users, requests, concurrency, max_queue)
    photos, clips = good_files(Path(data), max_clip_s)
    with tempfile.TemporaryDirectory(prefix="load-app-") as workdir:
        bad = make_bad_uploads(workdir, photos[0].path)
        plan = make_plan(photos, clips, bad, users, requests, seed)
        proc, url, log_path = start_server(checkpoint, concurrency, max_queue, device, workdir)
        summary.server_pid = proc.pid
        try:
            wait_until_up(proc, url, log_path, startup_timeout)
            log(f"server up at {url} (pid {proc.pid}); {users} users x {requests} requests")
            # single-user answers, one per distinct good file, one at a time
            client = make_client(url, timeout)
            for item in sorted({i for user in plan for i in user if i.good}, key=lambda i: i.path):
                summary.single[item.path] = send(client, item, -1, timeout)
            # the concurrent phase
            barrier = threading.Barrier(users)
            per_user: list[list[Record]] = [[] for _ in range(users)]
            threads = [threading.Thread(target=_user, args=(url, u, plan[u], timeout, barrier, per_user[u]),
                                        daemon=True) for u in range(users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            summary.records = [r for recs in per_user for r in recs]
            # still answering?
            check = next((i for user in plan for i in user if i.good and i.kind == "image"), photos[0])
            if check.path not in summary.single:
                summary.single[check.path] = send(client, check, -1, timeout)
            summary.after = send(client, check, -1, timeout)
            summary.server_rss_mb, summary.children_rss_mb = peak_rss_mb(proc.pid)
            summary.peak_rss_mb = summary.server_rss_mb + summary.children_rss_mb
        finally:
            stop_server(proc)
            summary.server_tracebacks = Path(log_path).read_text(errors="replace").count("Traceback") \
                if os.path.exists(log_path) else 0
    return summary


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; nan if empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def report(s: Summary) -> str:
    n = len(s.records)
    refused = s.count("refused")
    lat = s.latencies
    good = [r for r in s.records if r.outcome == "ok" and r.item.good]
    differ = {id(r) for r in s.mismatches}
    lines = [
        f"checkpoint: {s.checkpoint}",
        f"load: {s.users} users x {s.requests} requests = {n}; server --concurrency {s.concurrency} "
        f"--max-queue {s.max_queue}; single-user answers first: {len(s.single)} files",
        f"requests: ok {s.count('ok')} / refused with a message {refused} / failed {s.count('failed')}",
        f"  refused: queue full {s.count('refused', 'queue full')}, app message {s.count('refused', 'app')}, "
        f"upload limit (gradio_client) {s.count('refused', 'upload limit')}",
        f"latency of ok requests: p50 {percentile(lat, 50):.2f} s, p95 {percentile(lat, 95):.2f} s (n={len(lat)})",
        f"server peak RSS (VmHWM): {s.peak_rss_mb:.0f} MB (server {s.server_rss_mb:.0f} MB + children "
        f"{s.children_rss_mb:.0f} MB)",
        f"answers equal to the single-user answer: {sum(id(r) not in differ for r in good)}/{len(good)}"
        + (" (all)" if not s.mismatches else ""),
        f"server still answers afterwards: {'yes' if s.still_answers else 'NO'}"
        + (f" ({s.after.reason}: {s.after.message})" if s.after and not s.still_answers else ""),
        f"server log: {s.server_tracebacks} traceback(s)",
    ]
    bad_seen: dict[str, set[str]] = {}
    for r in s.records:
        if not r.item.good:
            bad_seen.setdefault(r.item.label, set()).add(f"{r.outcome}" + (f": {r.message}" if r.message else ""))
    for label, outcomes in sorted(bad_seen.items()):
        lines.append(f"  bad upload, {label}: " + " | ".join(sorted(outcomes)))
    for title, recs in (("FAILED", s.failures), ("UNEXPECTED", s.unexpected), ("DIFFERENT ANSWER", s.mismatches)):
        for r in recs[:10]:
            ref = s.single.get(r.item.path)
            extra = f" single-user: {ref.caption!r} concurrent: {r.caption!r}" if title == "DIFFERENT ANSWER" and ref \
                else f" {r.outcome} {r.reason}: {r.message}"[:300]
            lines.append(f"  {title} [{'single' if r.user < 0 else f'user {r.user}'}] {r.item.label}:{extra}")
        if len(recs) > 10:
            lines.append(f"  ... and {len(recs) - 10} more {title.lower()}")
    lines.append("PASS" if s.passed else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", help="model to serve (default: the installed default model)")
    p.add_argument("--users", type=int, default=8, help=f"concurrent gradio_client users (1..{MAX_USERS})")
    p.add_argument("--requests", type=int, default=5, help=f"requests per user (1..{MAX_REQUESTS})")
    p.add_argument("--concurrency", type=int, default=2, help="passed to `captioner serve --concurrency`")
    p.add_argument("--max-queue", dest="max_queue", type=int, default=32,
                   help="passed to `captioner serve --max-queue`; below --users the queue overflows")
    p.add_argument("--seed", type=int, default=0, help="which files each request sends")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take before it counts as hung")
    p.add_argument("--startup-timeout", dest="startup_timeout", type=float, default=180.0,
                   help="seconds to wait for the server to answer")
    p.add_argument("--device", default="auto", help="passed to `captioner serve --device`")
    p.add_argument("--data", default=str(DATA), help="the shared data folder")
    p.add_argument("--max-clip-s", dest="max_clip_s", type=float, default=10.0, help="longest clip to send, s")
    args = p.parse_args(argv)
    try:
        summary = run_load(args.checkpoint, args.users, args.requests, args.concurrency, args.max_queue, args.seed,
                           args.timeout, args.startup_timeout, args.device, args.data, args.max_clip_s)
    except KeyboardInterrupt:
        print("load_app: interrupted (server stopped)", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"load_app: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. ConfigError: no default model
        print(f"load_app: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report(summary))
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
