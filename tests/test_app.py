"""The web app as users and API clients meet it: a real server on 127.0.0.1, gradio_client, and headless Chromium.

No mocked model: the app serves the session's tiny trained checkpoint (and a tiny attention model made here).
"""
import argparse
import shutil
import dataclasses
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO_MINI_TRAIN_IMAGES

from captioner.app import (MAX_UPLOAD_BYTES, MAX_VIDEO_MB, _upload_path, attention_overlay, build_app,
                           decode_settings, launch, model_info_markdown, model_view)
from captioner.config import DecodeConfig
from captioner.errors import CaptionerError, ConfigError
from captioner.inference import Captioner
from captioner.media import build_transform
from captioner.cli.serve import add_parser as add_serve_parser, run as cmd_serve

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bikes.mp4"
CARPHONE = VIDEO.with_name("carphone_pristine.mp4")
# Gradio's queue statistics use pandas options that pandas 3 deprecates: their noise, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
SETTINGS = dict(method="beam", beam_size=3, num_captions=3, length_penalty=1.5, max_len=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def caption_via_client(client, path, method="beam", beam_size=3, num_captions=3, length_penalty=1.5, max_len=20,
                       temperature=1.0):
    return client.predict(handle_file(str(path)), method, beam_size, num_captions, length_penalty, max_len,
                          temperature, api_name="/caption_image")


def serve(checkpoint):
    port = free_port()
    demo = launch(str(checkpoint), host="127.0.0.1", port=port, device="cpu", prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def image():
    return sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(trained):
    demo, url = serve(trained["dir"] / "last.pt")
    yield {"url": url, "checkpoint": trained["dir"] / "last.pt", "demo": demo}
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory, feature_cache, trained):
    """A tiny attention LSTM, 2 epochs on 4 real images: enough for real (if rough) attention maps."""
    from captioner.config import ModelConfig, TrainConfig
    from captioner.model import build_model
    from captioner.training import fit

    data = dataclasses.replace(trained["data"], items=trained["data"].items[:4])
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=32, hidden_dim=64, attention=True, attention_dim=32, dropout=0.0),
                        len(trained["vocab"]))
    out = tmp_path_factory.mktemp("attention-run")
    cfg = TrainConfig(epochs=2, batch_size=4, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    fit(model, trained["vocab"], data, None, cfg, str(out), torch.device("cpu"), cache_dir=feature_cache,
        progress=False, log=lambda msg: None)
    return out / "last.pt"


# ---------------------------------------------------------------- through gradio_client, against a live server

def test_caption_image_matches_captioner(client, server, image):
    best, table, word, heatmap, seen, marked = caption_via_client(client, image)
    cap = Captioner.load(server["checkpoint"], device="cpu")
    assert best == cap.caption([image], **SETTINGS)[0]
    assert best.strip()
    expected = cap.caption_detailed([image], **SETTINGS)[0]
    assert [row[1] for row in table["data"]] == expected.captions
    assert [row[0] for row in table["data"]] == [1, 2, 3]
    assert [row[2] for row in table["data"]] == [round(s, 3) for s in expected.scores]
    assert heatmap is None and word["visible"] is False  # no attention in this model
    assert [c["label"] for c in seen["confidences"]] == [c.word for c in expected.candidates]  # what the CNN sees
    assert "".join(t["token"] for t in marked).strip() == best


def test_impossible_settings_are_clamped_not_refused(client, image):
    best, table, *_ = caption_via_client(client, image, method="greedy", num_captions=3)
    assert len(table["data"]) == 1 and table["data"][0][1] == best
    _, table, *_ = caption_via_client(client, image, beam_size=2, num_captions=5)
    assert len(table["data"]) == 2


@pytest.mark.parametrize("name, content, fragment", [
    ("notes.txt", b"this is not a photo\n", "not a readable image"),
    ("broken.jpg", None, "corrupt or truncated"),
    ("empty.png", b"", "empty"),
])
def test_bad_file_gives_a_friendly_error(client, image, tmp_path, name, content, fragment):
    bad = tmp_path / name
    bad.write_bytes(image.read_bytes()[:2000] if content is None else content)
    with pytest.raises(AppError) as info:
        caption_via_client(client, bad)
    msg = str(info.value)
    assert fragment in msg and name in msg
    assert "Traceback" not in msg and 'File "' not in msg and "/gradio/" not in msg  # no server internals


def test_oversize_upload_is_refused(server, client, tmp_path):
    big = tmp_path / "huge.mp4"
    with open(big, "wb") as f:
        f.truncate(MAX_VIDEO_MB * 2**20 + 1024)  # sparse: costs no disk
    with open(big, "rb") as f:
        r = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("huge.mp4", f, "video/mp4")},
                       timeout=60)
    assert r.status_code == 413, r.text
    photo = tmp_path / "huge.jpg"  # under the server's limit, over the per-image one
    with open(photo, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1024)
    with pytest.raises(AppError, match=r"huge\.jpg is 20\.0 MB; the limit is 20 MB per image"):
        caption_via_client(client, photo)


def caption_video_via_client(client, path, timed="auto", method="greedy"):
    return client.predict(handle_file(str(path)), method, 3, 1, 1.5, 20, 1.0, timed,
                          api_name="/caption_video")


def test_caption_video_gives_caption_frames_and_timed_captions(client, server):
    caption, gallery, rows, vtt, seen = caption_video_via_client(client, VIDEO, timed="5s")
    cap = Captioner.load(server["checkpoint"], device="cpu")
    assert caption == cap.caption([VIDEO], method="greedy")[0] and caption.strip()
    assert len(gallery) == cap.model.cfg.num_frames and gallery[0]["caption"].endswith(" s")
    assert [r[0] for r in rows["data"]][0] == "0:00.0" and all(r[2].strip() for r in rows["data"])
    text = Path(vtt).read_text()
    assert text.startswith("WEBVTT") and text.count("-->") == len(rows["data"])
    # what the CNN sees in a street pan: nothing but the floor the 120 dog breeds sum, which is not shown
    assert seen is None or "label" not in seen
    # a short clip in "auto" mode gets no timed captions
    _, _, rows, vtt, _ = caption_video_via_client(client, VIDEO)
    assert rows["data"] in ([], [["", "", ""]]) and vtt is None
    # a man in a suit and a tie: what the CNN sees is shown, most probable first
    *_, seen = caption_video_via_client(client, CARPHONE)
    expected = cap.caption_detailed([CARPHONE])[0].candidates
    assert seen["label"] == expected[0].word and [c["label"] for c in seen["confidences"]] == [c.word for c in expected]


@pytest.mark.parametrize("name, content, fragment", [
    ("clip.mp4", b"", "file is empty"),
    ("clip.mp4", b"\x00" * 4096, "not a readable video"),
    ("photo.jpg", None, "photo.jpg is not a video file"),
])
def test_bad_video_gives_a_friendly_error(client, image, tmp_path, name, content, fragment):
    bad = tmp_path / name
    bad.write_bytes(image.read_bytes() if content is None else content)
    with pytest.raises(AppError) as info:
        caption_video_via_client(client, bad)
    msg = str(info.value)
    assert fragment in msg and name in msg
    assert "Traceback" not in msg and 'File "' not in msg and "/gradio/" not in msg


def test_serves_no_files_outside_its_uploads(server, image):
    for path in (server["checkpoint"], image, Path("/etc/passwd"), Path(__file__)):
        r = httpx.get(server["url"] + f"gradio_api/file={os.path.abspath(path)}", timeout=30)
        assert r.status_code == 403, path


def test_attention_model_shows_a_heatmap_per_word(attention_checkpoint, image):
    demo, url = serve(attention_checkpoint)
    try:
        best, _, word, heatmap, *_ = caption_via_client(Client(url, verbose=False), image, max_len=6)
    finally:
        demo.close()
    words = best.split()
    assert words and word["visible"] is True and word["value"] == 0
    assert [label for label, _ in word["choices"]] == words
    with Image.open(heatmap) as im:
        assert im.size == (384, 384)


def test_port_in_use_is_a_one_line_error(server):
    port = int(server["url"].rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
        launch(str(server["checkpoint"]), port=port, device="cpu", prevent_thread_lock=True, quiet=True)


# ---------------------------------------------------------------- the pieces, without a server

def test_attention_overlay_puts_heat_where_the_attention_is():
    view = Image.new("RGB", (384, 384), (128, 128, 128))
    alpha = np.zeros(49, dtype=np.float32)
    alpha[0] = 1.0  # top-left cell of the 7x7 grid
    out = np.asarray(attention_overlay(view, alpha)).astype(int)  # (S,S,3)
    assert out.shape == (384, 384, 3)
    hot, cold = out[10, 10], out[370, 370]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where it looked, blue elsewhere
    with pytest.raises(ValueError, match="not a square grid"):
        attention_overlay(view, np.ones(10))


def test_model_view_is_the_center_square_the_model_saw():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # the centre square is red, the sides black
    transform = build_transform({"size": 224, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3})
    view = np.asarray(model_view(img, transform, size=64))
    assert view.shape == (64, 64, 3) and view[:, :, 0].min() > 200


def test_decode_settings_validate_and_clamp():
    base = DecodeConfig()
    cfg, notes = decode_settings(base, "sample", 3, 4, 1.0, 12, 0.7)
    assert (cfg.method, cfg.num_captions, cfg.max_len, cfg.temperature, notes) == ("sample", 4, 12, 0.7, [])
    cfg, notes = decode_settings(base, "beam", 2.0, 5, 0.0, 20, 1.0)  # sliders may send floats
    assert cfg.num_captions == 2 and "at most 2" in notes[0]
    with pytest.raises(ConfigError, match="unknown decoding method 'top'"):
        decode_settings(base, "top", 3, 1, 1.0, 20, 1.0)
    with pytest.raises(ConfigError, match="temperature"):
        decode_settings(base, "sample", 3, 1, 1.0, 20, 0.0)


def test_upload_checks(tmp_path):
    with pytest.raises(CaptionerError, match="no image"):
        _upload_path(None)
    big = tmp_path / "server-name.jpg"
    with open(big, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(CaptionerError, match=r"holiday\.jpg is 20\.0 MB; the limit is 20 MB"):
        _upload_path({"path": str(big), "orig_name": "holiday.jpg"})
    with pytest.raises(CaptionerError, match="no video"):
        _upload_path(None, "video")
    with pytest.raises(CaptionerError, match=r"notes\.txt is not a video file; expected one of: \.mp4"):
        _upload_path({"video": {"path": str(big), "orig_name": "notes.txt"}}, "video")
    assert _upload_path({"video": {"path": str(big), "orig_name": "clip.webm"}}, "video") == (str(big), "clip.webm")


def test_marked_caption_marks_the_words_the_cnn_sees():
    from captioner.app import marked_caption
    from captioner.nouns import Candidate

    marked = marked_caption("two dogs and a cat on a bus", [Candidate("dog", 0.8), Candidate("bus", 0.3)])
    assert [t for t, label in marked if label == "seen"] == ["dogs ", "bus "]
    assert marked_caption("a cat", []) == [("a ", None), ("cat ", None)]


def test_model_info_panel(server):
    cap = Captioner.load(server["checkpoint"], device="cpu")
    text = model_info_markdown(cap.info, cap.decode_config)
    for fragment in ("`last.pt`", "efficientnet_lite0", "LSTM, 1 layer, hidden 128", "no (global image vector",
                     f"{len(cap.vocab)} words", "Training data | not recorded", "beam, beam 3"):
        assert fragment in text, text
    assert str(server["checkpoint"].parent) not in text  # no server paths on the web page
    text = model_info_markdown({**cap.info, "data": {"data": "/x/captions_train.json", "format": "coco",
                                                     "train_images": 2266}, "scores": {"val": {"BLEU-4": 0.1234}}},
                               cap.decode_config)
    assert "`captions_train.json`, coco format, 2,266 images" in text and "val.BLEU-4 0.1234" in text
    assert "Second decoder" not in text
    two = {**cap.info, "fluent": {"model_config": {"rnn": "lstm", "hidden_dim": 512},
                                  "data": {"data": "/x/captions_train.json"}}}
    text = model_info_markdown(two, cap.decode_config)
    assert ("Second decoder | fluent LSTM (hidden 512) on `captions_train.json` alone: its caption is the one shown "
            "unless the CNN is at least 30% sure of a noun it does not name") in text, text


def test_build_app_with_and_without_examples(server, image, tmp_path):
    import gradio as gr

    def example_sets(app) -> list[int]:  # samples per clickable example set in the page
        return [len(b.samples) for b in app.blocks.values() if isinstance(b, gr.Dataset)]

    cap = Captioner.load(server["checkpoint"], device="cpu")
    assert example_sets(build_app(cap, str(tmp_path / "missing"))) == []
    (tmp_path / "notes.txt").write_text("not an example")
    assert example_sets(build_app(cap, str(tmp_path))) == []  # a folder without images: no examples, no error
    shutil.copy(image, tmp_path / "photo.jpg")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    assert example_sets(build_app(cap, str(tmp_path))) == [1]  # the photo; not the text file or the hidden one


def test_serve_flags():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.share, args.device, args.checkpoint) == ("127.0.0.1", 7860, False, "auto", None)
    args = parser.parse_args(["serve", "--checkpoint", "m.pt", "--port", "0"])
    with pytest.raises(ConfigError, match="--port must be in 1..65535"):
        cmd_serve(args)


# ---------------------------------------------------------------- a real browser

@pytest.mark.timeout(180)
def test_browser_uploads_an_image_and_reads_the_caption(server, image, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    photo = sorted(EXAMPLES.glob("*.jpg"))[0] if EXAMPLES.is_dir() and any(EXAMPLES.glob("*.jpg")) else image
    shot = tmp_path / "app.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(server["url"], wait_until="domcontentloaded")
            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            page.locator("#input-image img").first.wait_for(timeout=30_000)  # the preview: upload finished
            page.locator("#caption-button").click()
            page.wait_for_function("() => (document.querySelector('#best-caption textarea') || {}).value?.trim()",
                                   timeout=60_000)
            caption = page.locator("#best-caption textarea").input_value()
            expect(page.locator("#nbest")).to_contain_text(caption, timeout=10_000)
            time.sleep(0.5)  # let the table and toasts settle before the picture
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert caption.strip()
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 600


def test_subtitle_files_do_not_pile_up(tmp_path):
    from captioner.app import _SubtitleFiles

    files = _SubtitleFiles(keep_s=0.0)
    first = files.path("clip.vtt")
    Path(first).write_text("WEBVTT\n")
    second = files.path("clip.vtt")  # same name, another request
    assert second != first and os.path.dirname(second).startswith(files.root)
    assert not os.path.exists(os.path.dirname(first))  # older than keep_s: removed when the next one is made
    assert len(os.listdir(files.root)) == 1
