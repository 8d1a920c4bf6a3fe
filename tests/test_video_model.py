"""Video models: per-frame features, temporal aggregation, a tiny model that overfits the shared clips,
timed captions (WebVTT / SRT), and the video dataset formats."""
import json
import re
from fractions import Fraction
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from captioner.defaults import default_checkpoint
from captioner.config import ModelConfig, TrainConfig
from captioner.datasets import read_captions
from captioner.decoder import CaptionDecoder
from captioner.errors import ConfigError
from captioner.inference import Captioner
from captioner.model import build_model
from captioner.segments import Segment, format_subtitles, merge_repeats, parse_window
from captioner.training import fit
from captioner.vocab import Vocabulary
from conftest import COCO_MINI_TRAIN_IMAGES, DATA

VIDEOS = DATA / "videos"
B, F, E, V, T = 3, 5, 24, 30, 6


def video_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"embed_dim": 16, "hidden_dim": 32, "attention_dim": 8, "dropout": 0.0, "num_frames": F,
                          **kw})


@pytest.mark.parametrize("temporal,bidirectional", [("mean", False), ("attention", False), ("lstm", False),
                                                    ("lstm", True), ("gru", True)])
def test_temporal_decoders_shapes_and_stepping_equals_teacher_forcing(temporal, bidirectional):
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, video_cfg(temporal=temporal, temporal_bidirectional=bidirectional)).eval()
    frames, tokens = torch.randn(B, F, E), torch.randint(1, V, (B, T))
    out = dec(frames, tokens)
    assert out.logits.shape == (B, T, V)
    attends = temporal != "mean"
    assert (out.alphas is not None) == attends
    if attends:
        assert out.alphas.shape == (B, T, F)  # attention over frames
    state = dec.init_state(frames)
    for t in range(T):
        log_probs, state = dec.step(tokens[:, t], state)
        assert torch.allclose(log_probs, torch.log_softmax(out.logits[:, t], -1), atol=1e-5)


def test_bidirectional_temporal_encoder_reads_later_frames():
    """The first frame's state must depend on what comes after it (it would not in a one-way RNN)."""
    torch.manual_seed(0)
    dec = CaptionDecoder(V, E, video_cfg(temporal="gru", temporal_bidirectional=True)).eval()
    frames = torch.randn(1, F, E)
    later = frames.clone()
    later[0, -1] += 1.0
    assert not torch.allclose(dec.temporal(frames)[0][0, 0], dec.temporal(later)[0][0, 0])


def test_model_encodes_images_and_clips_mixed_in_one_batch():
    torch.manual_seed(0)
    cfg = video_cfg(backbone="resnet18", encoder_weights="none", temporal="attention")
    model = build_model(cfg, V).eval()
    media = [torch.randn(3, 64, 64), torch.randn(7, 3, 64, 64), torch.randn(2, 3, 64, 64)]
    with torch.no_grad():
        feats = model.encode(media)
        assert feats.shape == (3, F, 512)
        assert torch.allclose(feats[0], feats[0, :1].expand(F, -1))  # a still image is a still clip
        one = model.encode([media[1]])
    assert torch.allclose(one[0], feats[1], atol=1e-5)  # batching does not change a clip's features
    image_model = build_model(video_cfg(backbone="resnet18", encoder_weights="none"), V).eval()
    with torch.no_grad():
        assert image_model.encode(media).shape == (3, 1, 512)  # image models read the mean over frames


def test_video_config_is_validated():
    with pytest.raises(ConfigError, match="unknown temporal"):
        ModelConfig(temporal="max").validate()
    with pytest.raises(ConfigError, match="attends over its frames"):
        ModelConfig(temporal="mean", attention=True).validate()
    with pytest.raises(ConfigError, match="needs --temporal lstm or gru"):
        ModelConfig(temporal="mean", temporal_bidirectional=True).validate()


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, feature_cache):
    """A tiny video model (attention over 8 frames of frozen EfficientNet-Lite0 features) trained on the 8
    shared clips until it reproduces their captions."""
    data = read_captions(str(VIDEOS / "captions.jsonl"))
    vocab = Vocabulary.build((c for it in data.items for c in it.captions), min_freq=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, hidden_dim=128, dropout=0.0, temporal="attention",
                                    num_frames=8), len(vocab))
    cfg = TrainConfig(epochs=40, batch_size=8, lr=3e-3, patience=0, scheduler="none", min_freq=1)
    out = tmp_path_factory.mktemp("video-run")
    fit(model, vocab, data, data, cfg, str(out), torch.device("cpu"), cache_dir=feature_cache, progress=False,
        log=lambda msg: None)
    return {"dir": out, "data": data, "vocab": vocab}


def test_tiny_video_model_overfits_the_clips_captions(video_run):
    cap = Captioner.load(video_run["dir"] / "best.pt")
    data, vocab = video_run["data"], video_run["vocab"]
    out = cap.caption([it.image for it in data.items], method="greedy")
    known = [{vocab.decode(vocab.encode(c, 20)[1:-1]) for c in it.captions} for it in data.items]
    hits = sum(o in k for o, k in zip(out, known))
    assert hits >= 7, list(zip(out, known))
    # the checkpoint records that it is a video model, and batched equals one-by-one
    assert cap.model.cfg.temporal == "attention" and cap.model.cfg.num_frames == 8
    assert cap.caption_video(data.items[3].image, method="greedy").caption == out[3]
    result = cap.caption_detailed([data.items[0].image], method="beam", beam_size=3, num_captions=2)[0]
    assert len(result.captions) == 2 and result.attention[0].shape[1] == 8  # attention over the 8 frames


def test_video_checkpoint_captions_from_the_command_line(video_run, tmp_path):
    clip = video_run["data"].items[1].image
    image = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[0]
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", "--checkpoint",
                           str(video_run["dir"] / "best.pt"), clip, str(image), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in rows] == [clip, str(image)] and all(r["caption"] for r in rows)

    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", "--checkpoint",
                           str(video_run["dir"] / "best.pt"), "--segments", "4s", "--format", "srt", clip],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_valid_srt(proc.stdout)


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def assert_valid_vtt(text: str, duration: float) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n")
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)$", text, re.M)
    assert cues and len(cues) == text.count("-->")
    spans = [(_seconds(a), _seconds(b), c) for a, b, c in cues]
    for (s, e, c), nxt in zip(spans, spans[1:] + [None]):
        assert s < e and c.strip()
        if nxt:
            assert e <= nxt[0] + 1e-9 and nxt[2] != c  # monotonic, and equal neighbours were merged
    assert spans[0][0] == 0 and abs(spans[-1][1] - duration) < 0.05
    return spans


def assert_valid_srt(text: str) -> None:
    blocks = text.strip().split("\n\n")
    last = -1.0
    for i, block in enumerate(blocks, 1):
        number, times, caption = block.split("\n")
        assert number == str(i) and caption.strip()
        start, end = times.split(" --> ")
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", start) and re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", end)
        assert last <= _seconds(start) < _seconds(end)
        last = _seconds(end)


def test_fixed_windows_give_valid_webvtt_over_the_whole_clip(video_run):
    cap = Captioner.load(video_run["dir"] / "best.pt")
    segments = cap.caption_segments(VIDEOS / "video8105.mp4", window=5.0, method="greedy")
    spans = assert_valid_vtt(format_subtitles(segments, "vtt"), 18.018)
    assert all(abs(round(s / 5.0) * 5.0 - s) < 1e-6 for s, _, _ in spans)  # cues start on window borders
    lines = [json.loads(line) for line in format_subtitles(segments, "jsonl").splitlines()]
    assert [l["caption"] for l in lines] == [c for _, _, c in spans]


def _concatenate(a, b, out) -> float:
    """Two real clips, re-encoded back to back at one size and 25 fps: a video with one cut; its time."""
    cut, n = 0.0, 0
    with av.open(str(out), "w") as dst:
        s = dst.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for src_path in (a, b):
            with av.open(str(src_path)) as src:
                for frame in src.decode(video=0):
                    frame = av.VideoFrame.from_ndarray(frame.to_ndarray(width=320, height=240, format="rgb24"),
                                                       format="rgb24")
                    frame.pts, frame.time_base, n = n, Fraction(1, 25), n + 1
                    for packet in s.encode(frame):
                        dst.mux(packet)
                    cut += 1 / 25 if src_path == a else 0.0
        for packet in s.encode():
            dst.mux(packet)
    return cut


def test_shot_segments_cut_where_the_clips_meet(tmp_path):
    """Real clips of a ski slope (one continuous shot) then a cooking scene: a cut where they meet."""
    path = tmp_path / "two.mp4"
    cut = _concatenate(VIDEOS / "video8105.mp4", VIDEOS / "jPBxl9gFqNY_110_117.avi", path)
    cap = Captioner.load(default_checkpoint())  # the shipped image model: shot detection needs real features
    segments = cap.caption_segments(path, window="shots", method="greedy")
    bounds = [s.start for s in segments[1:]]
    assert any(abs(b - cut) <= 0.5 for b in bounds), (cut, [(s.start, s.end, s.caption) for s in segments])
    assert segments[0].start == 0 and all(a.end == b.start for a, b in zip(segments, segments[1:]))


def test_parse_window_and_merge():
    assert parse_window("5s") == 5.0 and parse_window("2.5") == 2.5 and parse_window("1m") == 60.0
    assert parse_window("SHOTS") == "shots"
    for bad in ("0s", "-3s", "five", "5x"):
        with pytest.raises(ConfigError, match="--segments"):
            parse_window(bad)
    merged = merge_repeats([Segment(0, 5, "a dog", -3.0), Segment(5, 10, "a dog", -2.0), Segment(10, 12, "a cat", -1.0)])
    assert merged == [Segment(0, 10, "a dog", -2.0), Segment(10, 12, "a cat", -1.0)]
    assert format_subtitles(merged, "srt").startswith("1\n00:00:00,000 --> 00:00:10,000\na dog\n\n2\n")


def test_msrvtt_json_reads_the_split_and_finds_videos(tmp_path):
    for name in ("video8105", "video9149"):
        (tmp_path / f"{name}.mp4").symlink_to(VIDEOS / f"{name}.mp4")
    ann = {"info": {}, "videos": [{"video_id": "video8105", "split": "train", "id": 8105},
                                  {"video_id": "video9149", "split": "validate", "id": 9149},
                                  {"video_id": "video1", "split": "train", "id": 1}],
           "sentences": [{"video_id": "video8105", "caption": "a person skis", "sen_id": 0},
                         {"video_id": "video8105", "caption": "snow and trees", "sen_id": 1},
                         {"video_id": "video9149", "caption": "people talk", "sen_id": 2},
                         {"video_id": "video1", "caption": "gone", "sen_id": 3}]}
    (tmp_path / "train_val_videodatainfo.json").write_text(json.dumps(ann))
    data = read_captions(str(tmp_path / "train_val_videodatainfo.json"), split="train")
    assert data.format == "msrvtt"
    assert [(it.id, it.captions) for it in data.items] == [("video8105", ["a person skis", "snow and trees"])]
    assert [p.rsplit("/", 1)[1] for p in data.missing] == ["video1.mp4"]
    val = read_captions(str(tmp_path / "train_val_videodatainfo.json"), split="val")
    assert [it.id for it in val.items] == ["video9149"]


def test_msvd_descriptions_txt_and_csv(tmp_path):
    (tmp_path / "jPBxl9gFqNY_110_117.avi").symlink_to(VIDEOS / "jPBxl9gFqNY_110_117.avi")
    (tmp_path / "AllVideoDescriptions.txt").write_text(
        "# MSVD descriptions\n# VideoID Description\njPBxl9gFqNY_110_117 a man is cooking\n"
        "jPBxl9gFqNY_110_117 someone is frying food\nabc_1_2 a missing clip\n")
    data = read_captions(str(tmp_path / "AllVideoDescriptions.txt"))
    assert data.format == "msvd" and data.items[0].captions == ["a man is cooking", "someone is frying food"]
    assert data.items[0].image.endswith(".avi") and len(data.missing) == 1
    (tmp_path / "corpus.csv").write_text(
        "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
        "jPBxl9gFqNY,110,117,1,clean,20,English,A man is cooking.\n"
        "jPBxl9gFqNY,110,117,2,clean,20,German,Ein Mann kocht.\n")
    data = read_captions(str(tmp_path / "corpus.csv"))
    assert data.format == "msvd" and data.items[0].captions == ["A man is cooking."]


def test_jsonl_mixes_images_and_videos(tmp_path):
    image = sorted(COCO_MINI_TRAIN_IMAGES.glob("*.jpg"))[0]
    rows = [{"image": str(image), "caption": "a photo"}, {"video": str(VIDEOS / "bikes.mp4"), "caption": "bikes"}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_captions(str(tmp_path / "mixed.jsonl"))
    assert [it.image for it in data.items] == [str(image), str(VIDEOS / "bikes.mp4")]


def test_what_the_cnn_sees_in_a_clip_is_what_the_decoder_reads():
    """An image model reads a clip's mean frame feature: the candidates it shows for a clip are the classifier's
    probabilities of that feature, the same the copy head grounds its caption in (not the frames' mean
    probability, which differs where frames disagree)."""
    cap = Captioner.load(default_checkpoint())
    clip = VIDEOS / "bigbuckbunny.mp4"
    x = cap._load(str(clip))  # (F,3,H,W)
    with torch.no_grad():
        feats, probs = cap.model.encode_and_classify([x])  # (1,P,E), (1,C)
        grounded = cap.model.decoder.copy.class_probs(feats)  # (1,C)
        _, frame_probs = cap.model.encoder.features_and_probs(x)  # (F,C)
    assert torch.allclose(probs, grounded, atol=1e-4)
    assert not torch.allclose(probs, frame_probs.mean(0, keepdim=True), atol=1e-3)  # the frames disagree
    assert cap.caption_detailed([str(clip)])[0].candidates[0].prob == pytest.approx(
        float((grounded @ cap.model.decoder.copy.membership.float()).max()), abs=1e-3)
