"""The built wheel carries the default model and captions offline from outside the checkout (issue: a wheel
install had no model). The wheel goes into a fresh virtual environment that sees the test environment's
packages (--system-site-packages; captioner itself installed --no-deps), so this stays fast and offline."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, timeout=600, capture_output=True)
    wheel = next((tmp / "dist").glob("captioner-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return {"wheel": wheel, "python": python, "bin": venv / "bin", "cwd": outside}


def _run(env, *args):
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPTIONER_CHECKPOINT")}
    return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=600, cwd=env["cwd"], env=clean)


def test_wheel_contains_the_model_and_the_noun_table_but_not_the_example_photos(wheel_env):
    names = zipfile.ZipFile(wheel_env["wheel"]).namelist()
    assert "captioner/assets/default.pt" in names and "captioner/imagenet_nouns.tsv" in names
    assert not [n for n in names if n.endswith((".jpg", ".png", ".mp4"))]


def test_installed_wheel_imports_from_itself_and_finds_its_model(wheel_env):
    proc = _run(wheel_env, wheel_env["python"], "-c",
                "import captioner, sys; print(captioner.__file__); print(captioner.default_checkpoint()); "
                "from captioner import Captioner; Captioner.load()")
    assert proc.returncode == 0, proc.stderr
    module, model = proc.stdout.split()
    venv = str(wheel_env["python"].parent.parent)
    assert module.startswith(venv) and model.startswith(venv), proc.stdout  # not the source tree's
    assert model.endswith(os.path.join("captioner", "assets", "default.pt"))


def test_installed_wheel_captions_a_photo_offline_from_elsewhere(wheel_env):
    photo = DATA / "everyday" / "images" / "wolf_snow.jpg"
    proc = _run(wheel_env, wheel_env["bin"] / "captioner", "caption", photo)
    assert proc.returncode == 0, proc.stderr
    path, caption = proc.stdout.strip().split("\t")
    assert path == str(photo) and len(caption.split()) >= 3
    proc = _run(wheel_env, wheel_env["bin"] / "captioner", "info")
    assert proc.returncode == 0 and '"found_as": "the installed default model"' in proc.stdout, proc.stderr
    proc = _run(wheel_env, wheel_env["bin"] / "captioner", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("captioner ")


def test_a_missing_named_checkpoint_is_one_line(wheel_env):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(wheel_env["bin"] / "captioner"), "caption", str(DATA / "everyday" / "images" /
                           "eagle.jpg")], capture_output=True, text=True, timeout=300, cwd=wheel_env["cwd"],
                          env={**clean, "CAPTIONER_CHECKPOINT": "/nonexistent/model.pt"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "$CAPTIONER_CHECKPOINT names '/nonexistent/model.pt'" in lines[0]


def test_a_missing_optional_dependency_names_its_extra():
    from captioner.errors import require_extra
    from captioner.errors import ConfigError

    require_extra("gradio", "app", "the web app")  # installed here: no error
    with pytest.raises(ConfigError, match=r"^the web app needs no_such_module_xyz, which is not installed: "
                                          r"pip install 'captioner\[app\]'$"):
        require_extra("no_such_module_xyz", "app", "the web app")
