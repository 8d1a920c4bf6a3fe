"""A video development set with `objects`, made from captioned photos: one short clip per photo, a slow zoom
and pan over it (the "Ken Burns" move), so the clip path (frames sampled, encoded, averaged) can be measured
against the photo path on the same subjects.

    python scripts/make_still_clips.py ../shared/data/everyday/captions.jsonl --out runs/everyday_clips
    captioner evaluate --data runs/everyday_clips/captions.jsonl --no-meteor

Each clip (Motion JPEG in .avi, written by PyAV) starts on the whole photo cropped to the clip's aspect and ends on the
`--zoom` share of it, drifting to one side (left and right alternate); it has the photo's captions and
`objects`, so `captioner evaluate` reports subject named, person where none, repeats and hallucination for
clips as it does for photos. `--zoom 1.0` makes still clips of the whole photo (cropped to the clip's aspect):
what those lose against the photos is the frames' doing, the rest the move's. What the clips do not have is real
motion (moving subjects, cuts, blur): a check of the path, not a substitute for real clips. The source set's terms apply to what this writes; never train on
clips of a development set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.datasets import read_captions  # noqa: E402
from captioner.errors import CaptionerError, MediaError  # noqa: E402
from captioner.media import is_video, load_image  # noqa: E402


def crop_box(width: int, height: int, t: float, zoom: float, aspect: float, direction: int
             ) -> tuple[float, float, float, float]:
    """The part of a width x height photo shown at time t in [0, 1]: the largest `aspect` (w/h) crop at t = 0,
    `zoom` of it at t = 1, its centre moved `direction` (+1 right, -1 left) as far as the photo allows."""
    w0, h0 = (width, width / aspect) if width / height <= aspect else (height * aspect, height)
    scale = 1.0 - (1.0 - zoom) * t
    w, h = w0 * scale, h0 * scale
    cx = width / 2 + direction * (width - w) / 2 * t
    cy = height / 2
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def write_clip(photo: Image.Image, path: Path, seconds: float, fps: int, size: tuple[int, int], zoom: float,
               direction: int) -> None:
    width, height = size
    n = max(2, round(seconds * fps))
    with av.open(str(path), "w") as container:
        # Motion JPEG: every frame coded on its own, and the same pixels every run (PyAV's x264 wrote frames
        # that differed by up to 35 levels between runs of the same input, even on one thread, and that alone
        # moved the everyday clips' subject rate between 66.7 and 70.0 %)
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.bit_rate = 8_000_000  # about 100 kB a frame at 480x360, 10 fps: few visible artefacts
        for i in range(n):
            box = crop_box(photo.width, photo.height, i / (n - 1), zoom, width / height, direction)
            frame = photo.resize(size, Image.BILINEAR, box=box)
            video_frame = av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")
            video_frame.pts = i  # in frames (the stream's time base is 1/fps)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_clips(data: str, out: Path, seconds: float = 3.0, fps: int = 10, size: tuple[int, int] = (480, 360),
               zoom: float = 0.75) -> Path:
    """One clip per photo of `data` (a captions file captioner reads) -> out/captions.jsonl."""
    items = read_captions(data).items
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, item in enumerate(items):
        name = Path(item.image).stem + ".avi"
        if is_video(item.image):
            raise MediaError(f"{item.image}: a video; expected photos to make clips of")
        photo = load_image(item.image)  # as captioning reads it: upright (EXIF), RGB
        write_clip(photo, out / name, seconds, fps, size, zoom, 1 if i % 2 else -1)
        line = {"video": name, "captions": item.captions, "source": f"made from {Path(item.image).name}"}
        if item.objects:
            line["objects"] = item.objects
        lines.append(json.dumps(line))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return out / "captions.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="captions of the photos (jsonl with objects, like ../shared/data/everyday)")
    ap.add_argument("--out", required=True, help="folder for the clips and their captions.jsonl")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--size", default="480x360", help="WxH of the clips (default 480x360, MSR-VTT-like)")
    ap.add_argument("--zoom", type=float, default=0.75, help="share of the first view shown at the end")
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 16 or any(v % 2 for v in size):
            raise ValueError
    except ValueError:
        print(f"error: --size {args.size!r}: expected WxH, even numbers of at least 16, e.g. 480x360",
              file=sys.stderr)
        return 2
    if not 0.1 <= args.zoom <= 1.0 or args.seconds <= 0 or args.fps < 1:
        print("error: expected --zoom in [0.1, 1], --seconds > 0 and --fps >= 1", file=sys.stderr)
        return 2
    try:
        path = make_clips(args.data, Path(args.out), args.seconds, args.fps, size, args.zoom)
    except (CaptionerError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({sum(1 for _ in open(path))} clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
