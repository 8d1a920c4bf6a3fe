"""`captioner evaluate` and scripts/evaluate_bleu.py on real images with a tiny trained model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.config import DecodeConfig
from captioner.datasets import read_captions
from captioner.errors import DatasetError
from captioner.evaluation import evaluate
from captioner.metrics import caption_metrics

from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES, DATA

ROOT = Path(__file__).resolve().parents[1]


def eight_image_manifest(trained, tmp_path):
    path = tmp_path / "eight.jsonl"
    with open(path, "w") as f:
        for it in trained["data"].items:
            f.write(json.dumps({"image": it.image, "captions": it.captions}) + "\n")
    return path


def test_evaluate_writes_report_and_coco_results(trained, tmp_path):
    manifest = eight_image_manifest(trained, tmp_path)
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "evaluate", "--checkpoint",
                           str(trained["dir"] / "last.pt"), "--data", str(manifest), "--out", str(out),
                           "--no-meteor", "--quiet", "--beam-size", "3", "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    results = json.loads((out / "captions.json").read_text())
    assert report["items"] == 8 and len(results) == 8
    assert report["decoding"]["method"] == "beam" and report["decoding"]["beam_size"] == 3
    assert "not teacher-forced" in report["captions_are"]
    assert set(results[0]) == {"image_id", "caption"}
    # the model overfit these images, so its generated captions score high, and the numbers are reproducible
    refs = [it.captions for it in trained["data"].items]
    assert report["metrics"]["BLEU-4"] > 0.8
    assert report["metrics"] == {**caption_metrics(refs, [r["caption"] for r in results], meteor=False)}
    assert report["metrics"]["METEOR"] == {"unavailable": "not requested (meteor=False)"}
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR"):
        assert name in proc.stdout
    items = [json.loads(l) for l in (out / "items.jsonl").read_text().splitlines()]
    assert items[0]["references"] == refs[0]


def test_beam_sizes_side_by_side_script(trained, tmp_path):
    manifest = eight_image_manifest(trained, tmp_path)
    ckpt = str(trained["dir"] / "last.pt")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_bleu.py"), ckpt, ckpt, "--data",
                           str(manifest), "--beam-sizes", "1,3", "--no-meteor"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if l.startswith(ckpt)]
    assert len(rows) == 4 and "beam 1" in rows[0] and "beam 3" in rows[1]
    assert rows[0].split()[-7:] == rows[2].split()[-7:]  # the same checkpoint twice scores the same
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_bleu.py"), ckpt, "--data",
                          str(manifest), "--beam-sizes", "three"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--beam-sizes expects positive integers" in bad.stderr


def test_vocabulary_that_does_not_fit_the_data_is_refused(trained, tmp_path):
    manifest = tmp_path / "german.jsonl"
    manifest.write_text(json.dumps({"image": trained["data"].items[0].image,
                                    "captions": ["Ein Hund läuft über die grüne Wiese im Sonnenschein"]}) + "\n")
    cap = Captioner(trained["model"], trained["vocab"], torch.device("cpu"))
    with pytest.raises(DatasetError, match="knows only 0% of the reference words"):
        evaluate(cap, read_captions(str(manifest)), DecodeConfig(), meteor=False, progress=False)


@pytest.mark.parametrize("args,fragment", [
    (["--data", str(DATA / "flickr8k" / "Flickr8k.token.txt"), "--split", "test"], "no usable images"),
    (["--data", str(COCO_MINI_TRAIN), "--images", "/nonexistent"], "no usable images"),
])
def test_unusable_data_is_a_one_line_error(trained, tmp_path, args, fragment):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "evaluate", "--checkpoint",
                           str(trained["dir"] / "last.pt"), "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("captioner: error:")
