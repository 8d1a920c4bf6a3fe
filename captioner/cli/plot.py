"""`captioner plot RUN_DIR...`: a run's learning curves as a PNG (matplotlib, the [plot] extra)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    pl = sub.add_parser("plot", help="draw a training run's learning curves (loss, BLEU-4, CIDEr-D, grad norm, lr); "
                        "several runs that continue each other (e.g. xent, then scst) are drawn one after another")
    pl.add_argument("run_dir", metavar="RUN_DIR", nargs="+")
    pl.add_argument("--out", help="PNG path (default: the first RUN_DIR/curves.png)")
    return pl


def run(args: argparse.Namespace) -> int:
    from ..plotting import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
