"""`captioner` command line: train, caption, evaluate, batch, serve, plot, info.

User errors (bad flags, files, checkpoints) print one line `captioner: error: ...` and exit 2; they
never show a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Sequence

from .cli_common import (CHECKPOINT_HELP, add_decode_flags, add_model_flags, checkpoint_path, decode_overrides,
                         overrides)
from .config import DATASET_FORMATS, OBJECTIVES, RNN_TYPES, SCHEDULERS, TEMPORAL, ModelConfig, TrainConfig
from .errors import CaptionerError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning: train, caption, evaluate.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a captioning model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = t.add_argument_group("data")
    d.add_argument("--data", action="append",
                   help="training annotations (COCO json, Karpathy json, Flickr8k token txt, jsonl, csv); repeat "
                        "it to train on several sources at once, each followed by its own --images etc.")
    d.add_argument("--images", action="append",
                   help="folder the annotation's image paths are relative to (default: its folder); one per --data")
    d.add_argument("--format", action="append", choices=DATASET_FORMATS, help="default: detect; one per --data")
    d.add_argument("--split", action="append", choices=("train", "val", "test"),
                   help="split to train on (Karpathy, Flickr8k); one for all sources or one per --data")
    d.add_argument("--data-weight", dest="data_weight", action="append", type=float,
                   help="how often a source's photos are drawn relative to the others' (default 1); one per --data")
    d.add_argument("--person-share", dest="person_share", type=float,
                   help="re-weight draws so photos showing a person are this share of them (0 = as the data is)")
    d.add_argument("--val-data", dest="val_data", help="validation annotations (default: --data with --val-split)")
    d.add_argument("--val-images", dest="val_images")
    d.add_argument("--val-split", dest="val_split", choices=("train", "val", "test"))
    d.add_argument("--out", required=True, help="run folder for best.pt and last.pt")
    d.add_argument("--cache-dir", dest="cache_dir", help="feature cache (default: ~/.cache/captioner/features)")
    d.add_argument("--no-cache", dest="cache_features", action="store_false", default=None,
                   help="encode images every epoch instead of caching frozen-encoder features")
    d.add_argument("--resume", help="continue a run from its last.pt (model, optimizer, epoch, RNG)")
    d.add_argument("--init", metavar="CKPT",
                   help="start from a trained model's weights and vocabulary (a new run: fresh optimizer, epoch 1); "
                        "how --objective cider fine-tunes a cross-entropy model")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    m = t.add_argument_group("model (ignored with --resume or --init)")
    m.add_argument("--backbone", help="CNN encoder (default efficientnet_lite0)")
    m.add_argument("--encoder-weights", dest="encoder_weights", help="none | pretrained | PATH to a state dict")
    m.add_argument("--fine-tune-encoder", dest="fine_tune_encoder", type=int, help="train the last N stages")
    m.add_argument("--rnn", choices=RNN_TYPES)
    m.add_argument("--layers", dest="num_layers", type=int)
    m.add_argument("--embed-dim", dest="embed_dim", type=int)
    m.add_argument("--hidden-dim", dest="hidden_dim", type=int)
    m.add_argument("--dropout", type=float)
    m.add_argument("--attention", action="store_true", default=None, help="soft attention over the image grid")
    m.add_argument("--attention-dim", dest="attention_dim", type=int)
    m.add_argument("--tie-weights", dest="tie_weights", action="store_true", default=None)
    m.add_argument("--temporal", choices=TEMPORAL,
                   help="video models: how frames are combined (mean pooling, attention over frames, or an "
                        "lstm/gru over frames); none = an image model (default)")
    m.add_argument("--temporal-bidirectional", dest="temporal_bidirectional", action="store_true", default=None,
                   help="the lstm/gru temporal encoder reads the frames in both directions")
    m.add_argument("--frames", dest="num_frames", type=int, help="frames sampled per video (default 16)")
    m.add_argument("--copy-nouns", dest="copy_nouns", type=int, metavar="K",
                   help="copy decoder: may copy any of the K nouns the CNN's ImageNet classifier sees most "
                        "(novel objects; needs a pretrained encoder), 0 = off")
    m.add_argument("--concepts", action="store_true", default=None,
                   help="copy models: the CNN's candidate nouns are also an input of every decoder step (LSTM-A)")
    m.add_argument("--person-gate", dest="person_gate", action="store_true", default=None,
                   help="train a person detector beside the caption; decoding says a person only where it fires")
    o = t.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", dest="batch_size", type=int)
    o.add_argument("--lr", type=float)
    o.add_argument("--encoder-lr", dest="encoder_lr", type=float)
    o.add_argument("--weight-decay", dest="weight_decay", type=float)
    o.add_argument("--grad-clip", dest="grad_clip", type=float, help="max gradient norm, 0 = off")
    o.add_argument("--scheduler", choices=SCHEDULERS)
    o.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    o.add_argument("--scheduled-sampling", dest="scheduled_sampling", type=float)
    o.add_argument("--alpha-c", dest="alpha_c", type=float, help="doubly stochastic attention weight")
    o.add_argument("--copy-hide", dest="copy_hide", type=float,
                   help="copy models: how often a caption noun the CNN sees must be copied, not generated")
    o.add_argument("--objective", choices=OBJECTIVES,
                   help="xent: cross-entropy with teacher forcing; cider: self-critical sequence training, which "
                        "maximises the CIDEr-D of sampled captions (fine-tune an xent model: --init CKPT, small --lr)")
    o.add_argument("--scst-samples", dest="scst_samples", type=int,
                   help="objective cider: captions sampled per image (each one's baseline is the others' mean)")
    o.add_argument("--scst-grounding", dest="scst_grounding", type=float,
                   help="objective cider, copy models: reward weight for naming the nouns the CNN is sure of "
                        "(sum of p - 0.5 over the candidates named)")
    o.add_argument("--scst-repetition", dest="scst_repetition", type=float,
                   help="objective cider: reward penalty per content word said twice")
    o.add_argument("--patience", type=int, help="early stopping patience in epochs, 0 = off")
    o.add_argument("--min-freq", dest="min_freq", type=int, help="min word count for the vocabulary")
    o.add_argument("--max-vocab", dest="max_vocab", type=int)
    o.add_argument("--max-caption-len", dest="max_len", type=int, help="words per training caption")
    o.add_argument("--seed", type=int)
    o.add_argument("--workers", dest="num_workers", type=int, help="DataLoader worker processes")
    o.add_argument("--quiet", action="store_true", help="no progress bars")

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

    pl = sub.add_parser("plot", help="draw a training run's learning curves (loss, BLEU-4, CIDEr-D, grad norm, lr); "
                        "several runs that continue each other (e.g. xent, then scst) are drawn one after another")
    pl.add_argument("run_dir", metavar="RUN_DIR", nargs="+")
    pl.add_argument("--out", help="PNG path (default: the first RUN_DIR/curves.png)")

    x = sub.add_parser("export", help="write the model's CNN encoder as ONNX (encoder.onnx + encoder.json: its "
                       "preprocessing and shapes), to run it with ONNX Runtime, OpenVINO or TensorRT elsewhere")
    x.add_argument("--onnx", required=True, metavar="DIR", help="folder to write encoder.onnx and encoder.json into")
    x.add_argument("--checkpoint", help=CHECKPOINT_HELP)

    i = sub.add_parser("info", help="describe a checkpoint: model, data, scores")
    i.add_argument("checkpoint", nargs="?")
    from .serve_cli import add_serve_parser  # gradio itself is imported only when `serve` runs
    from .batch_cli import add_batch_parser
    add_batch_parser(sub)
    add_serve_parser(sub)
    return parser


def cmd_caption(args: argparse.Namespace) -> int:
    from .inference import Captioner

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
            print(json.dumps({"file": r.source, "caption": r.caption, "log_prob": round(r.scores[0], 4),
                              "captions": [{"caption": c, "log_prob": round(s, 4), "score": round(k, 4), "finished": f}
                                           for c, s, k, f in zip(r.captions, r.scores, r.ranking, r.finished)],
                              "candidates": [{"word": c.word, "prob": c.prob} for c in r.candidates]}))
        elif len(r.captions) == 1:
            print(f"{r.source}\t{r.caption}")
        else:  # n-best: one ranked line per caption
            for rank, (c, sc) in enumerate(zip(r.captions, r.ranking), 1):
                print(f"{r.source}\t{rank}\t{sc:.3f}\t{c}")
    return 1 if failed else 0


def _caption_segments(cap, args: argparse.Namespace) -> int:
    """--segments: subtitles per video, printed (one video) or written to --out DIR."""
    from .media import is_video
    from .segments import format_subtitles, parse_window

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .datasets import read_and_report
    from .evaluation import evaluate, format_table, write_outputs
    from .grounding import format_grounding
    from .inference import Captioner

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
    print(f"{report['items']} images in {report['seconds']} s; captions generated, not teacher-forced{wrote}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .engine import export_encoder

    path = checkpoint_path(args.checkpoint)
    if os.path.exists(args.onnx) and not os.path.isdir(args.onnx):
        raise ConfigError(f"--onnx {args.onnx!r} is a file; expected a folder to write encoder.onnx into")
    model, _ = model_from_checkpoint(load_checkpoint(path), path)
    try:
        written = export_encoder(model.eval(), args.onnx)
    except OSError as exc:
        raise ConfigError(f"cannot write into {args.onnx!r}: {exc.strerror or exc}") from None
    for f in written:
        print(f)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    path = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(path)
    from .defaults import checkpoint_origin

    info = {"checkpoint": os.path.abspath(path), "found_as": checkpoint_origin(args.checkpoint),
            "format_version": ckpt["format_version"],
            "captioner_version": ckpt.get("captioner_version"), "model": ckpt["model_config"],
            "encoder": ckpt.get("encoder"), "vocab_size": len(ckpt["vocab"]["itos"]), "epoch": ckpt.get("epoch"),
            "data": ckpt.get("data"), "scores": ckpt.get("scores"), "held_out_scores": ckpt.get("held_out_scores"),
            "decode": ckpt.get("decode_config")}
    print(json.dumps(info, indent=2, default=str))
    return 0


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train_cli import cmd_train
            return cmd_train(args, overrides(ModelConfig, args), overrides(TrainConfig, args))
        if args.command == "caption":
            return cmd_caption(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "plot":
            from .plotting import plot_run
            print(plot_run(args.run_dir, args.out))
            return 0
        if args.command == "batch":
            from .batch_cli import cmd_batch
            return cmd_batch(args)
        if args.command == "serve":
            from .serve_cli import cmd_serve
            return cmd_serve(args)
        if args.command == "export":
            return cmd_export(args)
        return cmd_info(args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (a folder that is a file, a vanished input, a full disk)
        if exc.filename is None and exc.errno not in _STORAGE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"captioner: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
