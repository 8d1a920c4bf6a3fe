"""`captioner batch`: caption thousands of files into a .jsonl or .csv, resumably, optionally sharded with torchrun.

    captioner batch photos/ more/*.png list.txt --out results.jsonl [--checkpoint CKPT] [decoding flags]
    torchrun --nproc_per_node 4 -m captioner batch photos/ --out results.jsonl

`add_parser` and `run` plug into the CLI (user errors print one line `captioner: error: ...` and
exit 2; a stop by Ctrl-C or SIGTERM exits 130). Run on its own as `python -m captioner batch ...`.
"""
from __future__ import annotations

import argparse
import sys

from .common import add_decode_flags, add_model_flags, checkpoint_path, decode_overrides

DESCRIPTION = ("caption every image and video in files, folders (recursive), globs or .txt lists of paths into a "
               ".jsonl or .csv (path, caption, score, n-best, model, error); rerun the same command to resume")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help=DESCRIPTION, description=DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video file, folder (searched recursively), glob (quote it) or .txt file "
                        "listing paths")
    p.add_argument("--out", required=True, help="results file: .jsonl or .csv; appended to and resumed from")
    add_model_flags(p, batch_size=32, device_help="auto, cpu, cuda, cuda:N (torchrun: each rank its local GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding images and videos (default: min(2, CPU count))")
    p.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                   help="caption again the files whose earlier row is an error (others are always skipped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decode_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .. import distributed
    from ..batch import check_inputs, check_output, model_id, run_batch
    from ..inference import Captioner

    check_output(args.out)  # before any work: a bad --out or input fails in a second, not after loading
    check_inputs(args.inputs)
    checkpoint = checkpoint_path(args.checkpoint)
    device = distributed.rank_device(args.device)
    shard = distributed.join(device)
    try:
        cap = Captioner.load(checkpoint, device=str(device), engine=args.engine)
        cfg = replace(cap.decode_config, **decode_overrides(args))
        cfg.validate()
        log = (lambda msg: None) if args.quiet else _stderr
        summary = run_batch(cap, args.inputs, args.out, model=model_id(checkpoint), cfg=cfg,
                            batch_size=args.batch_size, workers=args.workers, retry_failed=args.retry_failed,
                            shard=shard, progress=not args.quiet, log=log)
    finally:
        distributed.leave()
    if shard.rank == 0:
        print(summary.line(), flush=True)
    return 130 if summary.stopped else 0


def _stderr(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)
