"""`captioner caption FILE...`: captions of images and videos printed (tab-separated or JSON lines), or timed
subtitles of videos (--segments)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import CaptionerError, ConfigError
from .common import add_decode_flags, add_model_flags, checkpoint_path, decode_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("caption", help="caption image and video files; prints FILE<TAB>CAPTION per file "
                       "(with --num-captions N: FILE<TAB>RANK<TAB>SCORE<TAB>CAPTION per caption; SCORE is the "
                       "length-normalised log-probability the search ranks by)")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--segments", metavar="WINDOW",
                   help="timed captions for videos: windows of WINDOW (e.g. 5s, 1m) or 'shots' (cut at shot "
                        "changes); prints subtitles (see --format)")
    c.add_argument("--format", dest="subtitle_format", choices=("vtt", "srt", "jsonl"), default="vtt",
                   help="subtitle format for --segments")
    c.add_argument("--out", dest="out_dir", metavar="DIR",
                   help="with --segments: write DIR/<video name>.<format> per video instead of printing")
    c.add_argument("--json", action="store_true", help="print one JSON object per line")
    add_model_flags(c, batch_size=16)
    add_decode_flags(c)
    return c


def run(args: argparse.Namespace) -> int:
    from ..inference import Captioner

    cap = Captioner.load(checkpoint_path(args.checkpoint), device=args.device, engine=args.engine)
    if args.segments:
        return _caption_segments(cap, args)
    results = cap.caption_detailed(args.files, batch_size=max(1, args.batch_size), **decode_overrides(args))
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"captioner: error: {r.error}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": r.source, "error": r.error}))
        elif args.json:
            print(json.dumps({"file": r.source, "caption": r.caption, "log_prob": round(r.log_probs[0], 4),
                              "captions": [{"caption": c, "log_prob": round(s, 4), "score": round(k, 4), "finished": f,
                                            **({"decoder": d} if d else {})}
                                           for c, s, k, f, d in zip(r.captions, r.log_probs, r.scores, r.finished,
                                                                    r.decoders)],
                              "candidates": [{"word": c.word, "prob": c.prob} for c in r.candidates]}))
        elif len(r.captions) == 1:
            print(f"{r.source}\t{r.caption}")
        else:  # n-best: one ranked line per caption
            for rank, (c, sc) in enumerate(zip(r.captions, r.scores), 1):
                print(f"{r.source}\t{rank}\t{sc:.3f}\t{c}")
    return 1 if failed else 0


def _caption_segments(cap, args: argparse.Namespace) -> int:
    """--segments: subtitles per video, printed (one video) or written to --out DIR."""
    from ..media import is_video
    from ..segments import format_subtitles, parse_window

    window = parse_window(args.segments)
    not_videos = [f for f in args.files if not is_video(f)]
    if not_videos:
        raise ConfigError(f"--segments needs video files; {not_videos[0]!r} is not one (by its extension)")
    if len(args.files) > 1 and not args.out_dir:
        raise ConfigError("--segments with several videos needs --out DIR (one subtitle file per video)")
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    failed = 0
    for path in args.files:
        try:
            segments = cap.caption_segments(path, window, progress=True, **decode_overrides(args))
        except CaptionerError as exc:
            failed += 1
            print(f"captioner: error: {exc}", file=sys.stderr)
            continue
        text = format_subtitles(segments, args.subtitle_format)
        if not args.out_dir:
            sys.stdout.write(text)
            continue
        os.makedirs(args.out_dir, exist_ok=True)
        target = os.path.join(args.out_dir, f"{os.path.splitext(os.path.basename(path))[0]}.{args.subtitle_format}")
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{path}\t{target}\t{len(segments)} segments")
    return 1 if failed else 0
