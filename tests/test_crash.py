"""kill -9 at random points: training resumes to the same weights, batch ends with one row per file, and no
reader ever sees a torn checkpoint, cache entry or results file."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from conftest import DATA

from captioner.atomic import atomic_write
from captioner.checkpoint import load_checkpoint

MINI = DATA / "coco-mini"
TRAIN = [sys.executable, "-m", "captioner.cli", "train",
         "--data", str(MINI / "annotations" / "captions_train2017.json"), "--images", str(MINI / "train2017"),
         "--val-data", str(MINI / "annotations" / "captions_val2017.json"), "--val-images", str(MINI / "val2017"),
         "--epochs", "8", "--batch-size", "16", "--seed", "0", "--workers", "0", "--quiet",
         "--embed-dim", "32", "--hidden-dim", "64", "--min-freq", "1"]


def run_killed(args: list[str], delay: float) -> int | None:
    """Start a command and SIGKILL it after `delay` s; None if it was killed, else its exit status."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return 0


@pytest.mark.timeout(900)
def test_training_killed_anywhere_resumes_to_the_same_weights(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(TRAIN + ["--out", str(reference), "--cache-dir", str(tmp_path / "cache-ref")], check=True,
                   capture_output=True)
    expected = load_checkpoint(reference / "last.pt")["decoder_state"]

    out, cache = tmp_path / "killed", tmp_path / "cache"
    rng = random.Random(0)
    delays = [rng.uniform(6, 12), rng.uniform(6, 10), rng.uniform(6, 10), rng.uniform(5, 9)]  # encoding, epochs
    kills, finished = 0, False
    for delay in delays + [600.0]:  # the last run is left to finish
        resume = ["--resume", str(out / "last.pt")] if (out / "last.pt").exists() else []
        finished = run_killed(TRAIN + ["--out", str(out), "--cache-dir", str(cache)] + resume, delay) == 0
        if (out / "last.pt").exists():
            load_checkpoint(out / "last.pt")  # never torn: written atomically, checksum verified
        if finished:
            break
        kills += 1
    assert finished and kills >= 1
    for entry in cache.rglob("*.pt"):  # the feature cache: every entry whole
        if not entry.name.startswith(".tmp-"):  # a write that SIGKILL cut short leaves its temp file; none reads it
            torch.load(entry, weights_only=True)
    got = load_checkpoint(out / "last.pt")["decoder_state"]
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_kill_in_mid_write_leaves_the_old_file_whole(tmp_path):
    """SIGKILL while a checkpoint (or cache entry, graph, merged results file) is being written."""
    target = tmp_path / "last.pt"
    torch.save({"epoch": 1}, target)
    code = ("import sys, time, torch; from captioner.atomic import atomic_write\n"
            f"with atomic_write({str(target)!r}) as f:\n"
            "    f.write(b'x' * 4_000_000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    with atomic_write(target) as f:  # the next write succeeds beside the leftover temp file
        torch.save({"epoch": 2}, f)
    assert torch.load(target, weights_only=True) == {"epoch": 2}


@pytest.mark.timeout(600)
def test_batch_killed_anywhere_ends_with_one_row_per_file(trained, tmp_path):
    photos = sorted((MINI / "val2017").glob("*.jpg"))[:40]
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "captioner", "batch", str(listing), "--out", str(out), "--checkpoint",
            str(trained["dir"] / "best.pt"), "--batch-size", "4", "--workers", "1", "--quiet"]
    rng = random.Random(1)
    for delay in [rng.uniform(4, 9) for _ in range(3)] + [600.0]:
        if run_killed(args, delay) == 0:
            break
        if out.exists():  # readable at every moment (a torn last line is cut off by the next run)
            lines = out.read_text().splitlines()
            for line in lines[:-1]:
                json.loads(line)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in photos)  # exactly one row per file
    assert all(r["error"] is None for r in rows)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp") or ".part-" in f]
