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


def train_cmd(out, *extra, procs: int = 2) -> list[str]:
    """`captioner train` on coco-mini, under torchrun with `procs` processes (or plain with procs=1): no dropout,
    no validation, and every caption cut to 6 words, so each rank's batch holds the same number of target
    tokens and the ranks' averaged gradients equal those of one process with the global batch."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port())] if procs > 1 else [sys.executable])
    return [*launch, "-m", "captioner", "train", "--data", str(COCO_MINI_TRAIN), "--images",
            str(COCO_MINI_TRAIN_IMAGES), "--hidden-dim", "32", "--embed-dim", "16", "--dropout", "0",
            "--max-caption-len", "6", "--min-freq", "2", "--seed", "3", "--out", str(out), "--quiet",
            "--device", "cpu", *extra]


def decoder_weights(path) -> dict:
    return load_checkpoint(path)["decoder_state"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    one = subprocess.run(train_cmd(tmp_path / "one", "--epochs", "1", "--batch-size", "8", *cache, procs=1),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(train_cmd(tmp_path / "two", "--epochs", "1", "--batch-size", "4", *cache),
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    losses = [json.loads((tmp_path / run / "metrics.jsonl").read_text())["train_loss"] for run in ("one", "two")]
    assert abs(losses[0] - losses[1]) < 1e-4, losses  # the log rounds to 4 decimals
    # 50 Adam steps: the same examples in the same steps, the same averaged gradients
    assert max_difference(decoder_weights(tmp_path / "one" / "last.pt"),
                          decoder_weights(tmp_path / "two" / "last.pt")) < 1e-4


def test_torchrun_resume_continues_exactly(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    straight = subprocess.run(train_cmd(tmp_path / "straight", "--epochs", "2", "--batch-size", "4", *cache),
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = subprocess.run(train_cmd(tmp_path / "split", "--epochs", "1", "--batch-size", "4", *cache),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(train_cmd(tmp_path / "split", "--epochs", "2", "--resume",
                                     str(tmp_path / "split" / "last.pt"), *cache),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["world_size"] == 2
    assert max_difference(decoder_weights(tmp_path / "straight" / "last.pt"), resumed["decoder_state"]) == 0.0


def test_sigterm_to_one_rank_stops_both_cleanly(tmp_path):
    """A stop request reaches one rank only (a signal sent to one pid): the ranks agree on it at the next batch,
    both save and stop; nobody hangs in a collective."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, "--epochs", "200", "--batch-size", "4", "--cache-dir",
                                      str(tmp_path / "cache")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "metrics.jsonl").exists():  # training, past the cache: both ranks in their epochs
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-2000:]
            time.sleep(0.2)
        ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                 text=True).stdout.split()]
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGTERM)  # one rank only
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("a rank kept waiting after the other was told to stop")
    assert output.count("stopped in epoch") == 1, output[-2000:]  # rank 0 says it, for both
    # (torchrun reports a rank's exit code 130 with a traceback of its own; the ranks print none)
    assert "[rank" not in output and "Connection closed" not in output, output[-3000:]
    stopped = load_checkpoint(out / "last.pt")
    assert stopped["epoch"] < 200 and "optimizer_state" in stopped  # resumable
