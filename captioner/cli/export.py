"""`captioner export --onnx DIR`: the model's CNN encoder as ONNX, for deployment elsewhere."""
from __future__ import annotations

import argparse
import os

from ..errors import ConfigError
from .common import CHECKPOINT_HELP, checkpoint_path


def add_parser(sub) -> argparse.ArgumentParser:
    x = sub.add_parser("export", help="write the model's CNN encoder as ONNX (encoder.onnx + encoder.json: its "
                       "preprocessing and shapes), to run it with ONNX Runtime, OpenVINO or TensorRT elsewhere")
    x.add_argument("--onnx", required=True, metavar="DIR", help="folder to write encoder.onnx and encoder.json into")
    x.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    return x


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..engine import export_encoder

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
