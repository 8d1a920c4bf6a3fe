"""scripts/load_app.py run small: 4 users x 3 requests against a real `captioner serve` with the session's tiny
trained checkpoint; every answer checked against Captioner.caption on the same file."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from captioner.inference import Captioner

pytest.importorskip("gradio_client")
ROOT = Path(__file__).resolve().parents[1]
# Gradio's queue statistics use pandas options that pandas 3 deprecates: their noise, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def load_script():
    spec = importlib.util.spec_from_file_location("load_app", ROOT / "scripts" / "load_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_app"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


load_app = load_script()


@pytest.fixture(scope="module")
def checkpoint(trained):
    best = trained["dir"] / "best.pt"
    return best if best.exists() else trained["dir"] / "last.pt"


@pytest.fixture(scope="module")
def summary(checkpoint):
    return load_app.run_load(checkpoint, users=4, requests=3, seed=0, device="cpu", timeout=60, log=lambda m: None)


@pytest.mark.timeout(300)
def test_small_load_has_no_failures_and_the_single_user_answers(summary, checkpoint):
    assert len(summary.records) == 12
    assert summary.failures == [], load_app.report(summary)
    assert summary.unexpected == [] and summary.mismatches == [], load_app.report(summary)
    cap = Captioner.load(checkpoint, device="cpu")
    good = [r for r in summary.records if r.item.good]
    assert good and all(r.outcome == "ok" for r in good)  # the queue (32) never fills with 4 users
    for r in [*good, summary.after]:
        settings = load_app.IMAGE_SETTINGS if r.item.kind == "image" else load_app.VIDEO_SETTINGS
        assert r.caption == cap.caption([r.item.path], **settings)[0], r.item.label
    assert {r.item.kind for r in good} == {"image", "video"}  # both endpoints were used


def test_bad_uploads_are_refused_with_a_message(summary):
    bad = [r for r in summary.records if not r.item.good]
    assert len(bad) == 5  # every kind of bad upload, once (the plan puts them first)
    for r in bad:
        assert r.outcome == "refused" and r.message.strip(), (r.item.label, r.reason, r.message)
        assert r.reason in ("app", "upload limit")
        if r.reason == "app":  # the app's own message names the user's file
            assert os.path.basename(r.item.path) in r.message
    labels = {r.item.label: r.message for r in bad}
    assert "empty" in labels["empty file"] and "not a readable image" in labels["text file named .jpg"]
    assert "corrupt or truncated" in labels["truncated JPEG (40%)"]
    assert "the limit is 20 MB per image" in labels["image over the per-image limit"]
    assert "exceeds the maximum file size" in labels["video over the upload limit"]


def test_server_still_answers_and_is_stopped_afterwards(summary):
    assert summary.still_answers and summary.after.caption.strip()
    assert summary.peak_rss_mb > 0 and summary.server_tracebacks == 0
    assert summary.server_pid and not os.path.exists(f"/proc/{summary.server_pid}")  # stopped and reaped
    text = load_app.report(summary)
    assert "failed 0" in text and "server still answers afterwards: yes" in text and text.endswith("PASS")


def test_a_server_that_never_comes_up_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="exited with status 2 before answering"):
        load_app.run_load(tmp_path / "missing.pt", users=1, requests=1, device="cpu", startup_timeout=60,
                          log=lambda m: None)


def test_plan_is_seeded_and_covers_every_bad_upload():
    items = [load_app.Item(f"p{i}.jpg", "image", True, f"p{i}") for i in range(20)]
    clips = [load_app.Item("c.mp4", "video", True, "c")]
    bad = [load_app.Item(f"b{i}", "image", False, f"b{i}") for i in range(5)]
    plan = load_app.make_plan(items, clips, bad, 4, 3, seed=1)
    assert plan == load_app.make_plan(items, clips, bad, 4, 3, seed=1)
    assert [len(p) for p in plan] == [3, 3, 3, 3]
    flat = [i for p in plan for i in p]
    assert set(bad) <= set(flat) and clips[0] in flat
    assert load_app.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and load_app.percentile([1.0, 2.0], 95) == 2.0
