"""The `captioner` command as a user runs it: a real subprocess, real files, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COCO_MINI_TRAIN, COCO_MINI_TRAIN_IMAGES, DATA


def run(*args, env_cache=None, timeout=300):
    env = None
    if env_cache:
        import os
        env = {**os.environ, "XDG_CACHE_HOME": env_cache}
    return subprocess.run([sys.executable, "-m", "captioner.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("captioner: error:")]
    assert len(lines) >= 1, proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


def test_train_then_caption_smoke(tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--data", COCO_MINI_TRAIN, "--images", COCO_MINI_TRAIN_IMAGES,
               "--val-data", COCO_MINI_TRAIN, "--val-images", COCO_MINI_TRAIN_IMAGES,
               "--epochs", 1, "--hidden-dim", 32, "--embed-dim", 16, "--rnn", "gru", "--batch-size", 64,
               "--min-freq", 2, "--out", out, "--quiet", env_cache=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "train: 80 images, 400 captions" in proc.stdout
    assert "BLEU-4=" in proc.stdout
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()

    images = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[:2]
    proc = run("caption", "--checkpoint", out / "best.pt", *images)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [l.split("\t")[0] for l in lines] == [str(p) for p in images]
    assert all(len(l.split("\t")) == 2 and l.split("\t")[1].strip() for l in lines)

    proc = run("caption", "--checkpoint", out / "best.pt", "--json", images[0])
    row = json.loads(proc.stdout)
    assert row["file"] == str(images[0]) and row["caption"] and row["log_prob"] < 0

    proc = run("caption", "--checkpoint", out / "best.pt", "--beam-size", 5, "--num-captions", 3, images[0])
    ranked = [l.split("\t") for l in proc.stdout.strip().splitlines()]
    assert [r[1] for r in ranked] == ["1", "2", "3"] and all(r[0] == str(images[0]) for r in ranked)
    assert len({r[3] for r in ranked}) == 3
    proc = run("caption", "--checkpoint", out / "best.pt", "--beam-size", 5, "--num-captions", 3, "--json", images[0])
    nbest = json.loads(proc.stdout)["captions"]
    assert [c["caption"] for c in nbest] == [r[3] for r in ranked]
    # ranked best first; captions the model ended come before any that max_len cut short
    keys = [(not c["finished"], -c["score"]) for c in nbest]
    assert keys == sorted(keys)

    proc = run("info", out / "best.pt")
    info = json.loads(proc.stdout)
    assert info["model"]["rnn"] == "gru" and info["data"]["train_images"] == 80

    # resume continues from last.pt for one more epoch, with the stored data paths
    proc = run("train", "--resume", out / "last.pt", "--epochs", 2, "--out", out, "--quiet",
               env_cache=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "epoch=2 " in proc.stdout and "epoch=1 " not in proc.stdout


def test_unreadable_image_is_one_line_and_others_still_captioned(trained, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a jpeg")
    good = trained["data"].items[0].image
    proc = run("caption", "--checkpoint", trained["dir"] / "best.pt", good, bad)
    assert proc.returncode == 1
    assert proc.stdout.startswith(good + "\t")
    assert_one_line_error(proc, str(bad), "not a readable image")


def test_corrupt_checkpoint_is_a_clean_error(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"PK\x03\x04 definitely not torch")
    proc = run("caption", "--checkpoint", ckpt, DATA / "flickr8k" / "images" / "667626_18933d713e.jpg")
    assert proc.returncode == 2
    assert_one_line_error(proc, str(ckpt), "not a readable captioner checkpoint")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,fragment", [
    (["train", "--data", "nope.json", "--out", "x"], "nope.json: annotation file not found"),
    (["train", "--data", str(COCO_MINI_TRAIN), "--images", str(COCO_MINI_TRAIN_IMAGES), "--out", "x",
      "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["caption", "--checkpoint", "missing.pt", "a.jpg"], "missing.pt: checkpoint file not found"),
])
def test_user_errors_are_one_line(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc, fragment)


def test_bad_flag_value_is_rejected_by_argparse():
    proc = run("caption", "--method", "telepathy", "x.jpg")
    assert proc.returncode == 2 and "invalid choice: 'telepathy'" in proc.stderr


def test_help_and_version_do_not_import_torch_or_gradio():
    code = ("import sys\nfrom captioner.cli import main\n"
            "for argv in (['--help'], ['--version'], ['caption', '--help'], ['serve', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'gradio', 'torchvision', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_package_has_no_import_cycles():
    """Every relative import in captioner/ and its subpackages (at module level or inside a function) forms an
    acyclic graph: a surface (the cli subcommands, batch, app) never imports another that imports it back."""
    import ast

    package = Path(__file__).resolve().parents[1] / "captioner"

    def dotted(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {dotted(p): p for p in package.rglob("*.py")}
    assert "captioner.cli.train" in modules and "captioner.training" in modules
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]  # the importing package
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                target = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                deps |= {target} | {f"{target}.{alias.name}" for alias in node.names}  # `from . import x`
        graph[name] = (deps & set(modules)) - {name}

    def cycle_from(start, node, path):
        for dep in sorted(graph[node]):
            if dep == start:
                return path + [dep]
            if dep not in path:
                found = cycle_from(start, dep, path + [dep])
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(m, m, [m]) for m in sorted(graph)) if c]
    assert cycles == []


def test_output_into_a_closed_pipe_ends_quietly():
    """`captioner info | head -0`: a reader that stops before the command writes gets no traceback on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "captioner.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""
