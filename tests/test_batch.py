"""`captioner batch` on real coco-mini images and a tiny real model: bad files become rows, reruns skip,
killed runs resume with no lost or duplicated rows, torchrun shards merge to the single-process result."""
import csv
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from captioner.batch import check_inputs, iter_inputs
from captioner.cli import main as cli_main
from captioner.errors import ConfigError
from captioner.inference import Captioner
from conftest import COCO_MINI_TRAIN_IMAGES

REPO = Path(__file__).resolve().parents[1]
GOOD = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))


def main(argv: list[str]) -> int:
    """`captioner batch ARGV`, in process."""
    return cli_main(["batch", *argv])


def png_with_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC fixed): a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def ckpt(trained):
    return str(trained["dir"] / "last.pt")


def corrupt_png() -> bytes:
    """A real PNG whose compressed pixel stream is damaged: the header reads, decoding fails."""
    buf = io.BytesIO()
    Image.open(GOOD[0]).resize((64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT")
    data[i + 20: i + 40] = bytes(20)
    return bytes(data)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Good images (jpg, png, nested, upper-case extension) and every kind of bad file; a .txt and a hidden
    file in the folder are not inputs."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b" / "deep").mkdir(parents=True)
    good = [root / n for n in ["a1.jpg", "a2.JPG", "b/b1.jpg", "b/deep/c1.jpeg", "z9.jpg"]]
    for src, dst in zip(GOOD, good):
        shutil.copy(src, dst)
    Image.open(GOOD[5]).save(root / "b" / "png1.png")
    good.append(root / "b" / "png1.png")
    jpg = GOOD[6].read_bytes()
    bad = {"empty.jpg": b"", "text.jpg": b"just some text, not a picture\n",
           "truncated.jpg": jpg[: len(jpg) // 3], "corrupt.png": corrupt_png(),
           "bomb.png": png_with_size(30000, 30000),  # over Pillow's own bomb limit: refused on open
           "big.png": png_with_size(12000, 12000)}  # under Pillow's, over media.MAX_IMAGE_PIXELS
    for name, data in bad.items():
        (root / "b" / name).write_bytes(data)
    (root / "notes.txt").write_text("not an input: a .txt inside a folder is not a list\n")
    (root / "._a1.jpg").write_bytes(b"macOS resource fork")
    return {"root": root, "good": sorted(map(str, good)), "bad": {str(root / "b" / n) for n in bad}}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """14 real images and 2 bad files: enough batches to kill a run in the middle."""
    root = tmp_path_factory.mktemp("many")
    for i, src in enumerate(GOOD[:14]):
        os.symlink(src, root / f"img{i:02d}.jpg")
    (root / "img05b.jpg").write_bytes(b"")
    (root / "img11b.jpg").write_bytes(b"<html>not an image</html>")
    return root


@pytest.fixture(scope="module")
def reference(many, ckpt, tmp_path_factory):
    """An uninterrupted single-process run over `many`."""
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    assert main([str(many), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "4"]) == 0
    return read_jsonl(out)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def same_rows(rows, ref):
    """Equal paths, captions, errors and order; scores equal up to float noise of other batch compositions."""
    assert [(r["path"], r["caption"], r["error"]) for r in rows] == [(r["path"], r["caption"], r["error"])
                                                                      for r in ref]
    for r, e in zip(rows, ref):
        assert (r["score"] is None and e["score"] is None) or abs(r["score"] - e["score"]) < 1e-3


def test_listing_is_sorted_recursive_filtered_streamed_and_deduplicated(photos, tmp_path):
    root = photos["root"]
    listed = list(iter_inputs([str(root)]))
    assert listed == sorted(photos["good"] + list(photos["bad"]))  # sorted names = depth-first sorted walk here
    assert not any(p.endswith((".txt",)) or "/._" in p for p in listed)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my picks\n{root / 'z9.jpg'}\n\n{root / 'a1.jpg'}\n{tmp_path / 'gone.jpg'}\n")
    again = list(iter_inputs([str(lst), str(root / "a*.*"), str(root / "b" / "deep"), str(root / "z9.jpg")]))
    assert again == [str(root / "z9.jpg"), str(root / "a1.jpg"), str(tmp_path / "gone.jpg"),  # list order kept
                     str(root / "a2.JPG"), str(root / "b" / "deep" / "c1.jpeg")]  # glob sorted; no repeats
    lazy = tmp_path / "lazy"
    (lazy / "sub").mkdir(parents=True)
    shutil.copy(GOOD[0], lazy / "a.jpg")
    stream = iter_inputs([str(lazy)])
    assert next(stream) == str(lazy / "a.jpg")
    shutil.copy(GOOD[1], lazy / "sub" / "late.jpg")  # streamed: a folder is listed only when reached
    assert list(stream) == [str(lazy / "sub" / "late.jpg")]
    for bad, msg in [(tmp_path / "nope", "does not exist"), (tmp_path / "*.gif", "matches no files")]:
        with pytest.raises(ConfigError, match=msg):
            check_inputs([str(bad)])


def test_folder_with_bad_files_rerun_and_retry_failed(photos, ckpt, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    args = [str(photos["root"]), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "3",
            "--workers", "2"]
    assert main(args) == 0
    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == sorted(photos["good"] + list(photos["bad"]))
    cap = Captioner.load(ckpt, device="cpu")
    expected = dict(zip(photos["good"], cap.caption(photos["good"])))
    for r in rows:
        assert r["model"].startswith("last.pt@") and len(r["model"]) == len("last.pt@") + 8
        if r["path"] in photos["bad"]:
            assert r["caption"] is None and r["log_prob"] is None and r["score"] is None and r["path"] in r["error"]
        else:
            assert r["error"] is None and r["caption"] == expected[r["path"]] and r["log_prob"] < 0
            assert r["score"] <= 0  # the search's ranking score: length-normalised, so not the log-prob
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert "empty" in errors["empty.jpg"] and "not a readable image" in errors["text.jpg"]
    assert "truncated" in errors["truncated.jpg"] and "decompression bomb" in errors["bomb.png"]
    assert "over the limit" in errors["big.png"] and "corrupt or truncated" in errors["corrupt.png"]
    summary = capsys.readouterr().out
    assert f"{len(photos['good'])} ok, {len(photos['bad'])} failed, 0 skipped" in summary

    before = out.read_bytes()
    assert main(args) == 0  # rerun: everything is skipped, nothing is appended
    assert out.read_bytes() == before
    assert f"0 ok, 0 failed, {len(rows)} skipped" in capsys.readouterr().out

    fixed = photos["root"] / "b" / "empty.jpg"
    shutil.copy(GOOD[7], fixed)  # repaired between runs: --retry-failed captions it
    try:
        assert main(args + ["--retry-failed"]) == 0
        want = cap.caption([str(fixed)])[0]
    finally:
        fixed.write_bytes(b"")
    retried = read_jsonl(out)
    assert [r["path"] for r in retried] == [r["path"] for r in rows]  # one row per path, same order
    new = {r["path"]: r for r in retried}[str(fixed)]
    assert new["error"] is None and new["caption"] == want
    assert f"1 ok, {len(photos['bad']) - 1} failed, {len(photos['good'])} skipped" in capsys.readouterr().out


def test_csv_output_with_n_best(photos, ckpt, tmp_path):
    out = tmp_path / "results.csv"
    listed = tmp_path / "list.txt"  # a list may name a file that is gone by the time it is read
    listed.write_text(f"{tmp_path / 'gone.jpg'}\n")
    inputs = [str(photos["root"] / "a1.jpg"), str(photos["root"] / "b" / "text.jpg")]
    assert main([*inputs, str(listed), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--beam-size", "3",
                 "--num-captions", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == inputs + [str(tmp_path / "gone.jpg")]
    assert "no such image file" in rows[2]["error"]
    nbest = json.loads(rows[0]["captions"])
    assert len(nbest) == 2 and nbest[0]["caption"] == rows[0]["caption"]
    assert nbest[0]["score"] == float(rows[0]["score"]) and nbest[0]["caption"] != nbest[1]["caption"]
    assert rows[1]["caption"] == "" and rows[1]["captions"] == "" and "not a readable image" in rows[1]["error"]


def test_an_output_in_the_layout_before_log_prob_is_upgraded_and_resumed(photos, ckpt, tmp_path, capsys):
    """Rows written when `score` held the log-probability: the rerun rewrites them once (log_prob = the old
    score, score unknown), skips their paths, and appends today's rows under the same header."""
    from captioner.batch import model_id

    done, todo = str(photos["root"] / "a1.jpg"), str(photos["root"] / "z9.jpg")
    model = model_id(ckpt)
    old_csv = tmp_path / "old.csv"
    old_csv.write_text("path,caption,score,captions,model,error\n"
                       f'{done},a photo,-4.5,"[{{""caption"": ""a photo"", ""score"": -4.5}}]",{model},\n')
    old_jsonl = tmp_path / "old.jsonl"
    old_jsonl.write_text(json.dumps({"path": done, "caption": "a photo", "score": -4.5, "model": model,
                                     "error": None}) + "\n")
    for out in (old_csv, old_jsonl):
        assert main([done, todo, "--out", str(out), "--checkpoint", ckpt]) == 0
        assert "rewritten in today's row layout" in capsys.readouterr().err
        rows = list(csv.DictReader(out.open())) if out.suffix == ".csv" else read_jsonl(out)
        assert [r["path"] for r in rows] == [done, todo]
        assert float(rows[0]["log_prob"]) == -4.5 and rows[0]["score"] in (None, "") and rows[0]["caption"] == "a photo"
        assert float(rows[1]["log_prob"]) < 0 and float(rows[1]["score"]) <= 0
    assert json.loads(list(csv.DictReader(old_csv.open()))[0]["captions"]) == [
        {"caption": "a photo", "log_prob": -4.5, "score": None}]


def test_output_problems_fail_at_start_with_one_line(photos, tmp_path, capsys):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text('{"id": 1, "text": "my own data"}\n')
    cases = [(tmp_path / "missing" / "out.jsonl", "does not exist"), (regular / "out.jsonl", "does not exist"),
             (tmp_path, "extension"), (tmp_path / "out.json", "choose one of: .jsonl, .csv")]
    # a checkpoint that does not exist: the output is checked before anything is loaded
    for out, msg in cases:
        assert main([str(photos["root"]), "--out", str(out), "--checkpoint", str(tmp_path / "no.pt")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("captioner: error:") and msg in err[0], err
    dir_out = tmp_path / "d.jsonl"
    dir_out.mkdir()
    assert main([str(photos["root"]), "--out", str(dir_out), "--checkpoint", str(tmp_path / "no.pt")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_foreign_or_other_model_output_is_refused_untouched(photos, ckpt, trained, tmp_path, capsys):
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text('{"id": 1, "text": "my own data"}\n{"id": 2')
    before = foreign.read_bytes()
    assert main([str(photos["root"] / "a1.jpg"), "--out", str(foreign), "--checkpoint", ckpt, "--quiet"]) == 2
    assert "not a captioner batch output" in capsys.readouterr().err and foreign.read_bytes() == before
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"path": "x.jpg", "caption": "a", "score": -1.0, "model": "best.pt@00000000",
                                 "error": None}) + "\n")
    assert main([str(photos["root"] / "a1.jpg"), "--out", str(other), "--checkpoint", ckpt, "--quiet"]) == 2
    assert "holds rows from model 'best.pt@00000000'" in capsys.readouterr().err


def test_hard_kill_leftovers_torn_lines_and_parts_resume_exactly(many, ckpt, reference, tmp_path, capsys):
    """A hard kill (SIGKILL, power loss) can leave a torn last line, and a killed torchrun its part files."""
    out = tmp_path / "out.jsonl"
    lines = [json.dumps(r) + "\n" for r in reference]
    out.write_text("".join(lines[:3]) + lines[3][:25])  # killed in mid-write of row 4
    part = Path(f"{out}.part-1-of-2")  # rank 1 of an earlier 2-process run: items 1, 3, 5, ...
    part.write_text(lines[5] + lines[7] + lines[9] + lines[11][:40])
    assert main([str(many), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "4"]) == 0
    same_rows(read_jsonl(out), reference)
    assert not part.exists() and "6 skipped" in capsys.readouterr().out


@pytest.mark.timeout(300)  # a hang guard, not a speed check
def test_sigterm_stops_cleanly_and_the_rerun_resumes(many, ckpt, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "batch", str(many), "--out", str(out),
                             "--checkpoint", ckpt, "--batch-size", "2", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    # Stop it once the first batch is on disk (or it has ended, which the assertions below then report).
    while not (out.exists() and out.stat().st_size) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "SIGTERM: stopped after the batch in hand" in stderr and "Traceback" not in stderr
    assert stdout.startswith("stopped (rerun the same command to continue)")
    partial = read_jsonl(out)  # every line complete
    assert 0 < len(partial) < len(reference) and len(partial) % 2 == 0
    same_rows(partial, reference[: len(partial)])

    assert main([str(many), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "4"]) == 0
    same_rows(read_jsonl(out), reference)  # nothing lost, nothing twice


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_merge_to_the_single_process_result(many, ckpt, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                           "-m", "captioner", "batch", str(many), "--out", str(out), "--checkpoint", ckpt,
                           "--quiet", "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done:") == 1 and "14 ok, 2 failed, 0 skipped" in proc.stdout
    same_rows(read_jsonl(out), reference)
    assert list(tmp_path.iterdir()) == [out]  # parts merged and removed


def test_a_folder_of_images_and_videos_with_a_bad_clip(ckpt, tmp_path):
    """Clips are captioned from their sampled frames next to photos in the same batches; a broken clip is a row."""
    root = tmp_path / "media"
    root.mkdir()
    videos = COCO_MINI_TRAIN_IMAGES.parents[1] / "videos"
    for name in ("bikes.mp4", "jPBxl9gFqNY_110_117.avi"):
        os.symlink(videos / name, root / name)
    os.symlink(GOOD[0], root / "photo.jpg")
    (root / "broken.mp4").write_bytes((videos / "video9818.mp4").read_bytes()[:5000])
    out = tmp_path / "out.jsonl"
    assert main([str(root), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "3"]) == 0
    rows = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert sorted(rows) == ["bikes.mp4", "broken.mp4", "jPBxl9gFqNY_110_117.avi", "photo.jpg"]
    assert rows["broken.mp4"]["caption"] is None and "broken.mp4" in rows["broken.mp4"]["error"]
    cap = Captioner.load(ckpt, device="cpu")
    expected = cap.caption([root / "bikes.mp4", root / "jPBxl9gFqNY_110_117.avi", root / "photo.jpg"])
    assert [rows[n]["caption"] for n in ("bikes.mp4", "jPBxl9gFqNY_110_117.avi", "photo.jpg")] == expected


def test_rows_are_written_a_decoded_group_at_a_time_and_equal_captioning_alone(many, ckpt, reference, tmp_path,
                                                                                monkeypatch):
    """Batches are encoded one by one and decoded DECODE_BATCHES at a time (the last group whatever is left,
    bad files included): one write + fsync per group, the same rows as any other grouping."""
    from captioner import batch as batch_module
    from captioner.results import ResultWriter

    writes = []
    real_write = ResultWriter.write
    monkeypatch.setattr(ResultWriter, "write", lambda self, rows: (writes.append(len(rows)), real_write(self, rows)))
    out = tmp_path / "out.jsonl"
    assert main([str(many), "--out", str(out), "--checkpoint", ckpt, "--quiet", "--batch-size", "3"]) == 0
    group = 3 * batch_module.DECODE_BATCHES
    assert writes == [group] * (16 // group) + ([16 % group] if 16 % group else [])  # 14 images, 2 bad files
    same_rows(read_jsonl(out), reference)  # grouped by 4 there, by 3 x DECODE_BATCHES here
