"""What the subcommands share: flags, their defaults, and how they become settings. Imports no surface, so no
surface imports another back, and nothing here imports torch.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ..config import DECODE_METHODS, DecodeConfig

CHECKPOINT_HELP = "model file (default: the installed default model, or $CAPTIONER_CHECKPOINT)"
ENGINE_CHOICES = ("auto", "torch", "onnx", "openvino")  # engine.ENGINES, here without importing torch


def add_model_flags(p: argparse.ArgumentParser, batch_size: int | None = None,
                    device_help: str = "auto, cpu, cuda, cuda:N") -> None:
    """The flags every captioning command shares: which model, on which device, run by which engine."""
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES,
                   help="what runs the CNN encoder: auto = ONNX Runtime on the CPU (exported once and cached "
                        "next to the feature cache), torch on CUDA; openvino: the same graph by OpenVINO "
                        "(pip install 'captioner[openvino]')")
    if batch_size is not None:
        p.add_argument("--batch-size", dest="batch_size", type=int, default=batch_size)


def add_decode_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--method", choices=DECODE_METHODS, help="decoding method (default: the checkpoint's)")
    g.add_argument("--beam-size", dest="beam_size", type=int)
    g.add_argument("--num-captions", dest="num_captions", type=int, help="n-best captions per input")
    g.add_argument("--max-len", dest="max_len", type=int, help="max words per caption")
    g.add_argument("--min-len", dest="min_len", type=int)
    g.add_argument("--length-penalty", dest="length_penalty", type=float, help="GNMT alpha, 0 = off")
    g.add_argument("--no-repeat-ngram-size", dest="no_repeat_ngram_size", type=int)
    g.add_argument("--repetition-penalty", dest="repetition_penalty", type=float)
    g.add_argument("--allow-unk", dest="suppress_unk", action="store_false", default=None,
                   help="allow the <unk> token in outputs (suppressed by default)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", dest="top_k", type=int)
    g.add_argument("--top-p", dest="top_p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--require-object", dest="require_object", action="store_true", default=None,
                   help="copy models: when the CNN is confident of a noun, the caption must name it")
    g.add_argument("--no-require-object", dest="require_object", action="store_false",
                   help="let the caption end without naming what the CNN is sure of")
    g.add_argument("--require-prob", dest="require_prob", type=float,
                   help="how sure the CNN must be of a noun for --require-object (default: the checkpoint's)")
    g.add_argument("--no-repeat-words", dest="no_repeat_words", action="store_true", default=None,
                   help="say each content word at most once")
    g.add_argument("--person-gate", dest="person_gate", action="store_true", default=None,
                   help="models with a person detector: person words only where it says there is a person")
    g.add_argument("--no-person-gate", dest="person_gate", action="store_false")
    g.add_argument("--person-prob", dest="person_prob", type=float,
                   help="how sure the person detector must be before a caption may say a person")
    g.add_argument("--allow-repeat-words", dest="no_repeat_words", action="store_false",
                   help="allow a content word to be said again")
    g.add_argument("--allow-bad-endings", dest="no_bad_endings", action="store_false", default=None,
                   help="let a caption end with an article or a preposition (\"... with a\"; forbidden by default)")
    g.add_argument("--allow-article-after-collective", dest="no_article_after_collective", action="store_false",
                   default=None, help="let \"a group of\", \"a vase of\" ... be followed by \"a\" or \"an\" "
                                      "(forbidden by default)")
    g.add_argument("--no-fluent", dest="fluent", action="store_false", default=None,
                   help="models with a fluent decoder too: caption with the grounded decoder alone")
    g.add_argument("--ground-prob", dest="ground_prob", type=float,
                   help="models with a fluent decoder: how sure the CNN must be of a noun the fluent caption "
                        "does not name before the grounded decoder captions instead")
    g.add_argument("--fusion", type=float, metavar="W",
                   help="models with a fluent decoder: where the grounded decoder captions, add W x the fluent "
                        "decoder's log-probabilities to its own at each step (0 = the grounded decoder alone)")
    g.add_argument("--doubt-prob", dest="doubt_prob", type=float,
                   help="copy models: a COCO object the CNN could recognise but is less than this sure of may "
                        "not be said (0 = off)")
    g.add_argument("--fluent-person-prob", dest="fluent_person_prob", type=float,
                   help="how sure the person detector must be before the fluent decoder may say a person")


def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave (not None) whose names are fields of config class `cls`."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def checkpoint_path(path: str | None) -> str:
    from ..defaults import resolve_checkpoint

    return resolve_checkpoint(path)


def decode_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Decoding flags the user gave; --beam-size or --num-captions without --method mean beam search."""
    opts = overrides(DecodeConfig, args)
    if "method" not in opts and ("beam_size" in opts or "num_captions" in opts):
        opts["method"] = "beam"
    return opts
