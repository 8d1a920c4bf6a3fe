"""Disk and path faults: a full disk while writing results or a checkpoint, outputs that cannot be folders,
a symlink loop in an input folder. Each gives one line and loses nothing already written."""
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import COCO_MINI_TRAIN_IMAGES

from captioner.batch import DECODE_BATCHES
from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.cli import main
from captioner.errors import StorageError

PHOTOS = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[:10]


def fill_disk_after(monkeypatch, target: Path, ok_writes: int) -> None:
    """os.write to `target` succeeds `ok_writes` times, then lands 10 bytes and fails with ENOSPC."""
    real, count = os.write, {"n": 0}

    def write(fd, data):
        if target.exists() and os.fstat(fd).st_ino == target.stat().st_ino:
            count["n"] += 1
            if count["n"] > ok_writes:
                real(fd, bytes(data[:10]))  # a part of the batch got in before the disk filled
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_full_disk_while_writing_results_keeps_every_row_and_the_rerun_finishes(trained, tmp_path, monkeypatch,
                                                                                capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in PHOTOS:
        os.symlink(p, folder / p.name)
    out = tmp_path / "out.jsonl"
    out.touch()
    # batches of 1 photo, decoded and written DECODE_BATCHES at a time: the third write fills the disk
    assert 2 * DECODE_BATCHES < len(PHOTOS)
    args = ["batch", str(folder), "--out", str(out), "--checkpoint", str(trained["dir"] / "best.pt"),
            "--batch-size", "1", "--workers", "1", "--quiet"]
    fill_disk_after(monkeypatch, out, ok_writes=2)
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("captioner: error")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "rerun the same command" in errors[0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # no torn line: every row parses
    assert len(rows) == 2 * DECODE_BATCHES  # the two groups written before the disk filled
    monkeypatch.undo()  # space was made
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(str(folder / p.name) for p in PHOTOS)


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(trained, tmp_path, monkeypatch):
    ckpt = load_checkpoint(trained["dir"] / "best.pt")
    path = tmp_path / "last.pt"
    save_checkpoint(path, ckpt)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 35136 vs 35088")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StorageError, match="last.pt: could not write .*the previous file is unchanged"):
        save_checkpoint(path, {**ckpt, "epoch": 99})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["checksum"] == load_checkpoint(trained["dir"] / "best.pt")["checksum"]
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.parametrize("command", [
    ["evaluate", "--data", "DATA", "--out", "BLOCK/ev", "--no-meteor", "--quiet"],
    ["export", "--onnx", "BLOCK/onnx"],
    ["batch", "PHOTO", "--out", "BLOCK/out.jsonl", "--quiet"],
])
def test_an_output_under_a_file_is_one_line_before_any_work(command, trained, tmp_path, capsys):
    block = tmp_path / "block"
    block.write_text("a file, not a folder")
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"image": str(PHOTOS[0]), "caption": "a photo"}) + "\n")
    args = [a.replace("BLOCK", str(block)).replace("DATA", str(ann)).replace("PHOTO", str(PHOTOS[0]))
            for a in command] + ["--checkpoint", str(trained["dir"] / "best.pt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("captioner: error: ") and str(block) in err


def test_symlink_loop_in_an_input_folder(trained, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    os.symlink(PHOTOS[0], folder / "sub" / "a.jpg")
    os.symlink(folder, folder / "sub" / "loop")  # a folder that contains itself
    os.symlink(folder / "nowhere.jpg", folder / "dangling.jpg")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(folder), "--out", str(out), "--checkpoint", str(trained["dir"] / "best.pt"),
                 "--quiet", "--workers", "1"]) == 0
    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == [str(folder / "sub" / "a.jpg")]  # the loop is not followed, the dangling link skipped
    assert rows[str(folder / "sub" / "a.jpg")]["error"] is None
