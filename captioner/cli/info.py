"""`captioner info [CKPT]`: what a checkpoint is (model, data, scores, decoding), as JSON."""
from __future__ import annotations

import argparse
import json
import os

from .common import checkpoint_path


def add_parser(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("info", help="describe a checkpoint: model, data, scores")
    i.add_argument("checkpoint", nargs="?")
    return i


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint

    path = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(path)
    from ..defaults import checkpoint_origin

    info = {"checkpoint": os.path.abspath(path), "found_as": checkpoint_origin(args.checkpoint),
            "format_version": ckpt["format_version"],
            "captioner_version": ckpt.get("captioner_version"), "model": ckpt["model_config"],
            "encoder": ckpt.get("encoder"), "vocab_size": len(ckpt["vocab"]["itos"]), "epoch": ckpt.get("epoch"),
            "data": ckpt.get("data"), "scores": ckpt.get("scores"), "held_out_scores": ckpt.get("held_out_scores"),
            "decode": ckpt.get("decode_config")}
    fluent = ckpt.get("fluent")
    if fluent is not None:  # the second decoder (fluent.py): what it is and was trained on, not its weights
        info["fluent_decoder"] = {"model": fluent.get("model_config"), "vocab_size": len(fluent["vocab"]["itos"]),
                                  **{k: fluent.get(k) for k in ("epoch", "data", "train_config", "scores")}}
    print(json.dumps(info, indent=2, default=str))
    return 0
