"""A bounded run of the input fuzzer (scripts/fuzz_inputs.py), and one regression test per bug it found."""
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA

import captioner.media as media
import captioner.video as video
from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.datasets import read_captions
from captioner.errors import CheckpointError, DatasetError, MediaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz_inputs  # noqa: E402


@pytest.mark.timeout(600)
def test_fuzzed_files_never_crash_hang_or_load_wrong(trained):
    report = fuzz_inputs.fuzz(n=160, seed=7, checkpoint=str(trained["dir"] / "best.pt"), timeout=30)
    problems = [(c.outcome, c.path, c.message[-300:]) for c in report.problems]
    assert problems == []
    kinds = {c.kind for c in report.cases}
    assert kinds == {"media", "checkpoint", "dataset"} and len(report.cases) >= 150
    assert report.counts["media"]["clean error"] > 0 and report.counts["checkpoint"]["clean error"] > 0
    b = report.batch
    assert b["status"] == 0 and not b["traceback"] and b["one_row_each"] and b["rows"] == b["files"]
    assert report.peak_rss_mb < 4096  # no mutated header made a reader allocate gigabytes


def test_non_utf8_annotation_names_the_file_and_line(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'{"image": "a.jpg", "caption": "a dog"}\n{"image": "b.jpg", "caption": "a \xa2 cat"}\n')
    with pytest.raises(DatasetError, match=r"captions.jsonl:2: not UTF-8 text"):
        read_captions(str(path))
    csv = tmp_path / "captions.csv"
    csv.write_bytes(b"image,caption\n\xffa.jpg,a dog\n")
    with pytest.raises(DatasetError, match=r"captions.csv:2: not UTF-8"):
        read_captions(str(csv))


def test_a_flipped_bit_in_a_weight_is_refused(trained, tmp_path):
    ckpt = load_checkpoint(trained["dir"] / "best.pt")
    assert "checksum" in ckpt
    name, weight = next((k, v) for k, v in ckpt["decoder_state"].items() if v.dtype == torch.float32)
    flipped = weight.clone()
    flipped.view(-1).view(torch.int32)[0] ^= 1 << 20  # one bit of one weight, as a disk error would
    path = tmp_path / "flipped.pt"
    torch.save({**ckpt, "decoder_state": {**ckpt["decoder_state"], name: flipped}}, path)  # checksum kept
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        load_checkpoint(path)
    save_checkpoint(tmp_path / "resaved.pt", {**ckpt, "decoder_state": {**ckpt["decoder_state"], name: flipped}})
    assert load_checkpoint(tmp_path / "resaved.pt")["checksum"] != ckpt["checksum"]  # saving writes a new one
    del ckpt["checksum"]
    torch.save(ckpt, tmp_path / "old.pt")  # files from before checksums load unchecked
    assert load_checkpoint(tmp_path / "old.pt")["format"] == "captioner-checkpoint"


def test_video_frames_over_the_pixel_limit_are_refused(monkeypatch):
    clip = DATA / "videos" / "bikes.mp4"
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 1000)
    with pytest.raises(MediaError, match="over the limit of 1,000"):
        media.read_video_frames(clip, 4)
