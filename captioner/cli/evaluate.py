"""`captioner evaluate --data ANNOTATIONS`: caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr-D and the
grounding rates)."""
from __future__ import annotations

import argparse
import os
import sys

from ..config import DATASET_FORMATS
from .common import add_decode_flags, add_model_flags, checkpoint_path, decode_overrides


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("evaluate", help="caption a dataset split and score it (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D)")
    add_model_flags(e, batch_size=64)
    e.add_argument("--data", required=True, help="annotations with reference captions (any supported format)")
    e.add_argument("--images", help="image folder (default: the annotation file's folder)")
    e.add_argument("--format", choices=DATASET_FORMATS)
    e.add_argument("--split", choices=("train", "val", "test"), help="split to evaluate (Karpathy, Flickr8k)")
    e.add_argument("--out", help="folder for report.json, captions.json, items.jsonl (default: print only)")
    e.add_argument("--no-meteor", dest="meteor", action="store_false", help="skip METEOR (Java, ~10 s)")
    e.add_argument("--cache-dir", dest="cache_dir", help="feature cache (default: ~/.cache/captioner/features)")
    e.add_argument("--quiet", action="store_true")
    add_decode_flags(e)
    return e


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..datasets import count_media, read_and_report
    from ..evaluation import evaluate, format_table, write_outputs
    from ..grounding import format_grounding
    from ..inference import Captioner

    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.out:
        os.makedirs(args.out, exist_ok=True)  # a bad --out fails now, not after captioning the split
    data = read_and_report(args.data, args.images, args.format, args.split, "evaluating", log)
    cap = Captioner.load(checkpoint_path(args.checkpoint), device=args.device, engine=args.engine)
    cfg = replace(cap.decode_config, **decode_overrides(args))
    report, captions = evaluate(cap, data, cfg, split=args.split, batch_size=max(1, args.batch_size),
                                meteor=args.meteor, cache_dir=args.cache_dir or "default", progress=not args.quiet)
    if args.out:
        write_outputs(args.out, report, data, captions)
    label = f"{os.path.basename(report['checkpoint'])} ({cfg.method}" + (
        f" {cfg.beam_size}, lp {cfg.length_penalty})" if cfg.method == "beam" else ")")
    print(format_table([(label, report["metrics"])]))
    print(format_grounding(report["grounding"]))
    wrote = f"; wrote {os.path.join(args.out, 'report.json')} and captions.json" if args.out else ""
    print(f"{count_media(data.items)} in {report['seconds']} s; captions generated, not teacher-forced{wrote}")
    return 0
