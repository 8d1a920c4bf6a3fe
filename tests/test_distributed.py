"""Distributed training with torchrun: 2 CPU processes (gloo) train, the result loads and captions."""
import json
import socket
import subprocess
import sys

import torch

from captioner import Captioner
from captioner.checkpoint import load_checkpoint

from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_train_and_the_result_captions(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "captioner", "train", "--data", str(COCO_MINI_TRAIN),
           "--images", str(COCO_MINI_TRAIN_IMAGES), "--val-data", str(COCO_MINI_TRAIN), "--val-images",
           str(COCO_MINI_TRAIN_IMAGES), "--epochs", "2", "--hidden-dim", "32", "--embed-dim", "16",
           "--batch-size", "32", "--min-freq", "2", "--out", str(out), "--quiet", "--device", "cpu",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # rank 0 alone logs and writes: one line per epoch, one metrics record per epoch
    assert proc.stdout.count("epoch=1 ") == 1 and proc.stdout.count("epoch=2 ") == 1
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert {"BLEU-4", "CIDEr-D", "grad_norm", "lr", "val_loss"} <= set(records[0])
    captions = Captioner.load(out / "best.pt").caption([sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[0]])
    assert captions[0].strip()
    # each rank's own RNG is saved, so a resumed rank 1 does not replay rank 0's dropout masks
    rngs = load_checkpoint(out / "last.pt")["rng_ranks"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])


def test_torchrun_trains_a_copy_model(tmp_path):
    """A copy model's copy embedding goes unused in batches whose captions copy nothing; DDP must allow it."""
    out = tmp_path / "ddp-copy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "captioner", "train", "--data", str(COCO_MINI_TRAIN),
           "--images", str(COCO_MINI_TRAIN_IMAGES), "--epochs", "1", "--hidden-dim", "32", "--embed-dim", "16",
           "--batch-size", "4", "--min-freq", "2", "--copy-nouns", "5", "--out", str(out), "--quiet",
           "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert Captioner.load(out / "last.pt").caption([sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[0]])[0].strip()


def test_torchrun_stopped_while_rank_0_encodes_stops_every_rank(tmp_path):
    """SIGTERM while rank 0 fills the feature cache: the other rank waited at a barrier until rank 0 was gone,
    then died with gloo's "Connection closed by peer" traceback. Now every rank stops cleanly."""
    import os
    import signal
    import time

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "captioner", "train", "--data", str(COCO_MINI_TRAIN),
           "--images", str(COCO_MINI_TRAIN_IMAGES), "--epochs", "50", "--hidden-dim", "32", "--embed-dim", "16",
           "--out", str(tmp_path / "run"), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while "encoding images" not in (line := proc.stderr.readline()) and time.monotonic() < deadline:
        assert line or proc.poll() is None, "training ended before it encoded anything"
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler's preemption does: every process gets it
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("a rank kept waiting after the stop")
    # (torchrun itself reports the signal it got with a traceback of its own; the ranks must not)
    assert err.count("captioner: interrupted") == 2 and "[rank" not in err and "Connection closed" not in err, \
        err[-2000:]
