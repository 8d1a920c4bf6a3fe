"""Reading video with PyAV: uniform sampling by seeking, rotation, variable frame rate, short clips, bad files."""
import json
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from captioner.errors import MediaError
from captioner.media import (build_transform, is_video, iter_frames_at, load_media_tensor, read_video_frames,
                             uniform_times, video_info)
from conftest import DATA

VIDEOS = DATA / "videos"
CLIPS = sorted(p for p in VIDEOS.iterdir() if p.suffix in (".mp4", ".avi"))
SPEC = {"size": 64, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


def make_video(path, n_frames: int, fps: int = 10, size=(64, 48), gop: int = 10, rotation: int = 0,
               pts: list[int] | None = None) -> str:
    """A real mpeg4 file whose frame i is a flat grey of brightness 4*i (so a frame's index can be read back)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height = size
        s.pix_fmt = "yuv420p"
        s.gop_size = gop
        s.codec_context.qmax = 2  # near-lossless, so the grey level survives
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (4 * i) % 256, np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, fps)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def frame_index(img: Image.Image) -> int:
    return int(round(np.asarray(img.convert("L"), dtype=float).mean() / 4))


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_every_shared_clip_gives_16_upright_frames_within_the_clip(clip):
    result = read_video_frames(clip, 16)
    assert len(result.frames) == len(result.times) == 16
    assert all(f.mode == "RGB" and f.size == (result.info.width, result.info.height) for f in result.frames)
    assert result.times == sorted(result.times)
    assert 0 <= result.times[0] and result.times[-1] <= result.info.duration
    # uniform: the sampled times are spread over the whole clip, not bunched at its start
    assert result.times[-1] - result.times[0] > 0.8 * result.info.duration


def test_transform_makes_a_clip_tensor_and_images_stay_3d():
    clip = load_media_tensor(VIDEOS / "bikes.mp4", build_transform(SPEC), num_frames=5)
    assert clip.shape == (5, 3, 64, 64)
    image = load_media_tensor(DATA / "coco-mini" / "train2017" / "000000000790.jpg", build_transform(SPEC))
    assert image.shape == (3, 64, 64)
    assert is_video("a/B.MP4") and is_video("x.webm") and not is_video("x.jpg")


def test_sampling_seeks_instead_of_decoding_the_whole_file(tmp_path):
    path = make_video(tmp_path / "long.mp4", n_frames=600, fps=10, gop=10)  # 60 s, a keyframe every second
    result = read_video_frames(path, 8)
    assert result.decoded < 600 * 0.25, f"decoded {result.decoded} of 600 frames for 8 samples"
    # and each sample is the frame on screen at its time
    for t, img in zip(result.times, result.frames):
        assert frame_index(img) == int(t * 10 + 1e-6) % 64


def test_frames_at_exact_times_read_back_the_right_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", n_frames=60, fps=10, gop=12)
    got = list(iter_frames_at(path, [0.0, 0.05, 1.0, 1.26, 4.4, 5.95, 99.0]))
    assert [frame_index(img) for _, img in got] == [0, 0, 10, 12, 44, 59, 59]  # past the end: the last frame


def test_variable_frame_rate_uses_timestamps(tmp_path):
    # 10 frames at irregular times (in 1/10 s units): 0, 1, 2, 10, 11, 30, 31, 32, 33, 50
    pts = [0, 1, 2, 10, 11, 30, 31, 32, 33, 50]
    path = make_video(tmp_path / "vfr.mp4", n_frames=10, fps=10, gop=100, pts=pts)
    got = list(iter_frames_at(path, [0.5, 1.5, 2.9, 3.05, 4.0]))
    assert [frame_index(img) for _, img in got] == [2, 4, 4, 5, 8]
    assert [round(t, 2) for t, _ in got] == [0.2, 1.1, 1.1, 3.0, 3.3]


def test_clip_shorter_than_the_frames_asked_for_repeats_frames(tmp_path):
    path = make_video(tmp_path / "short.mp4", n_frames=4, fps=10)
    result = read_video_frames(path, 16)
    indices = [frame_index(f) for f in result.frames]
    assert len(indices) == 16 and sorted(set(indices)) == [0, 1, 2, 3] and indices == sorted(indices)


def test_rotation_metadata_is_honoured(tmp_path):
    path = make_video(tmp_path / "rot.mp4", n_frames=5, size=(64, 32), rotation=90)
    result = read_video_frames(path, 2)
    assert result.info.rotation == 90
    assert all(f.size == (32, 64) for f in result.frames)


def test_uniform_times_are_slice_centres():
    assert uniform_times(10.0, 4) == [1.25, 3.75, 6.25, 8.75]
    assert uniform_times(2.0, 2, start=5.0) == [5.5, 6.5]


def _audio_only(path) -> str:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate = 16000
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def _corrupt_header(path) -> str:
    data = bytearray((VIDEOS / "video9818.mp4").read_bytes())
    data[:64] = b"\x00" * 64  # the ftyp box and the start of the next are gone
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("make, expected", [
    (lambda p: (p.write_bytes(b""), str(p))[1], "file is empty"),
    (_corrupt_header, "not a readable video"),
    (_audio_only, "has no video stream (audio)"),
    (lambda p: (p.write_text("hello, not a video\n"), str(p))[1], "not a readable video"),
    (lambda p: str(p.parent / "missing.mp4"), "no such video file"),
], ids=["empty", "corrupt-header", "audio-only", "text", "missing"])
def test_bad_video_files_give_one_line_errors(tmp_path, make, expected):
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(MediaError) as err:
        read_video_frames(path, 4)
    msg = str(err.value)
    assert expected in msg and "bad.mp4" in msg or "missing.mp4" in msg
    assert "\n" not in msg


def test_truncated_video_still_gives_frames_or_a_clean_error(tmp_path):
    data = (VIDEOS / "bikes.mp4").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])  # moov atom is at the end of this file: unreadable
    try:
        result = read_video_frames(path, 4)
        assert len(result.frames) == 4
    except MediaError as exc:
        assert "cut.mp4" in str(exc) and "\n" not in str(exc)


def test_video_info_of_a_real_clip():
    info = video_info(VIDEOS / "video8105.mp4")
    assert (info.width, info.height) == (320, 240)
    assert abs(info.duration - 18.0) < 0.1 and abs(info.fps - 29.97) < 0.01


def test_shared_clips_manifest_reads_as_videos():
    from captioner.datasets import read_captions

    data = read_captions(str(VIDEOS / "captions.jsonl"))
    assert len(data.items) == 8 and all(is_video(it.image) for it in data.items)
    assert not data.missing
    rows = [json.loads(line) for line in (VIDEOS / "captions.jsonl").read_text().splitlines()]
    assert data.items[0].captions == rows[0]["captions"]


def test_still_clips_are_readable_videos_that_move_and_keep_the_objects(tmp_path):
    """scripts/make_still_clips.py: the clip development set made from captioned photos (everyday's first two)."""
    import importlib.util
    from pathlib import Path

    from captioner.datasets import read_captions

    spec = importlib.util.spec_from_file_location("make_still_clips",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "make_still_clips.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines = (DATA / "everyday" / "captions.jsonl").read_text().splitlines()[:2]
    photos = tmp_path / "photos.jsonl"
    photos.write_text("\n".join(lines) + "\n")
    # jsonl image paths are relative to the file's images/ folder
    (tmp_path / "images").symlink_to(DATA / "everyday" / "images")
    made = mod.make_clips(str(photos), tmp_path / "clips", seconds=1.0, fps=8, size=(96, 72))
    clips = read_captions(str(made))
    assert [Path(it.image).name for it in clips.items] == [json.loads(x)["image"].replace(".jpg", ".avi") for x in lines]
    assert [it.objects for it in clips.items] == [json.loads(x)["objects"] for x in lines]
    info = video_info(clips.items[0].image)
    assert (info.width, info.height) == (96, 72) and abs(info.duration - 1.0) < 0.2
    frames = read_video_frames(clips.items[0].image, num_frames=4).frames
    first, last = (np.asarray(f, dtype=np.float32) for f in (frames[0], frames[-1]))
    assert np.abs(first - last).mean() > 5  # the view zooms and drifts: not a still
    again = mod.make_clips(str(photos), tmp_path / "again", seconds=1.0, fps=8, size=(96, 72))
    assert all((made.parent / it).read_bytes() == (again.parent / it).read_bytes()  # the same clips each run
               for it in ("captions.jsonl", Path(clips.items[0].image).name, Path(clips.items[1].image).name))
    assert mod.main([str(photos), "--out", str(tmp_path / "x"), "--size", "97x72"]) == 2
    # the crop at the start is the photo's largest crop of the clip's aspect, centred; at the end `zoom` of it
    assert mod.crop_box(400, 300, 0.0, 0.75, 4 / 3, 1) == (0.0, 0.0, 400.0, 300.0)
    assert mod.crop_box(400, 300, 1.0, 0.75, 4 / 3, 1) == (100.0, 37.5, 400.0, 262.5)
