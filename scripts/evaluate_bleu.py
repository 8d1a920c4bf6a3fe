"""Compare checkpoints side by side: the same split, the same decoding settings, one row per
(checkpoint, beam size), one column per metric.

    python scripts/evaluate_bleu.py runs/a/best.pt runs/b/best.pt \
        --data ../shared/data/coco2017/annotations/captions_val.json --images ../shared/data/coco2017/images \
        --beam-sizes 1,3,5
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from captioner.datasets import read_and_report
from captioner.errors import CaptionerError
from captioner.evaluation import evaluate, format_table
from captioner.inference import Captioner


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--data", required=True)
    p.add_argument("--images")
    p.add_argument("--format")
    p.add_argument("--split", choices=("train", "val", "test"))
    p.add_argument("--beam-sizes", default="1,3,5", help="comma-separated; 1 = greedy-equivalent beam")
    p.add_argument("--length-penalty", type=float, help="default: each checkpoint's own setting")
    p.add_argument("--max-len", type=int)
    p.add_argument("--no-meteor", dest="meteor", action="store_false")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        beams = [int(k) for k in args.beam_sizes.split(",")]
        if not beams or min(beams) < 1:
            raise ValueError
    except ValueError:
        print(f"evaluate_bleu: error: --beam-sizes expects positive integers like 1,3,5, got {args.beam_sizes!r}",
              file=sys.stderr)
        return 2
    try:
        data = read_and_report(args.data, args.images, args.format, args.split, "evaluating",
                               lambda m: print(m, file=sys.stderr))
        rows = []
        for ckpt in args.checkpoints:
            cap = Captioner.load(ckpt, device=args.device)
            for k in beams:
                changes = {"method": "beam", "beam_size": k, "num_captions": 1}
                if args.length_penalty is not None:
                    changes["length_penalty"] = args.length_penalty
                if args.max_len is not None:
                    changes["max_len"] = args.max_len
                cfg = replace(cap.decode_config, **changes)
                report, _ = evaluate(cap, data, cfg, split=args.split, meteor=args.meteor, progress=False)
                rows.append((f"{ckpt} beam {k} lp {cfg.length_penalty}", report["metrics"]))
    except CaptionerError as exc:
        print(f"evaluate_bleu: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"{len(data.items)} images of {os.path.basename(args.data)}"
          f"{' split ' + args.split if args.split else ''}; captions generated, not teacher-forced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
