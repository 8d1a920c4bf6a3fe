"""Checkpoints x decoding settings side by side: does the caption name what is in the photo (everyday, the
development set) and is it still a good COCO caption (coco2017 val)? Prints one row per (checkpoint, decoding)
with everyday's subject-named / person-where-none / repetition / object-hallucination rates and BLEU-4, and
val's BLEU-4, CIDEr-D, repetition and person-where-none. The README's grounding ablation comes from it.

    python scripts/compare_grounding.py assets/default.pt runs/A/scst/best.pt \\
        --decode "beam 5, lp 1.0" "beam 5, lp 1.0, require 0.5, once"

A decoding setting is a comma-separated list of: "greedy", "beam K", "lp A", "require P" (--require-object with
--require-prob P), "free" (no --require-object), "once" / "repeat" (--no-repeat-words or not), "person [P]" /
"anyone" (--person-gate [--person-prob P] or not); for models with a fluent decoder (fluent.py) "ground P"
(--ground-prob P), "fluent-person P" (--fluent-person-prob P), "fusion W" (--fusion W), "grounded"
(--no-fluent); "ends" (--allow-bad-endings); "articles" (--allow-article-after-collective); "checkpoint" (the
checkpoint's own decode_config, the start of every setting).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from captioner.config import DecodeConfig
from captioner.datasets import read_captions
from captioner.errors import CaptionerError
from captioner.evaluation import evaluate
from captioner.inference import Captioner


def parse_decoding(text: str, base: DecodeConfig) -> DecodeConfig:
    cfg = replace(base)
    for part in (p.strip() for p in text.split(",")):
        word, _, value = part.partition(" ")
        if word == "checkpoint":
            continue
        if word == "greedy":
            cfg = replace(cfg, method="greedy", num_captions=1)
        elif word == "beam":
            cfg = replace(cfg, method="beam", beam_size=int(value))
        elif word == "lp":
            cfg = replace(cfg, length_penalty=float(value))
        elif word == "require":
            cfg = replace(cfg, require_object=True, require_prob=float(value))
        elif word == "free":
            cfg = replace(cfg, require_object=False)
        elif word == "once":
            cfg = replace(cfg, no_repeat_words=True)
        elif word == "repeat":
            cfg = replace(cfg, no_repeat_words=False)
        elif word == "person":
            cfg = replace(cfg, person_gate=True, person_prob=float(value or 0.5))
        elif word == "anyone":
            cfg = replace(cfg, person_gate=False)
        elif word == "ground":
            cfg = replace(cfg, fluent=True, ground_prob=float(value))
        elif word == "fluent-person":
            cfg = replace(cfg, fluent_person_prob=float(value))
        elif word == "fusion":
            cfg = replace(cfg, fusion=float(value))
        elif word == "grounded":
            cfg = replace(cfg, fluent=False)
        elif word == "ends":
            cfg = replace(cfg, no_bad_endings=False)
        elif word == "articles":
            cfg = replace(cfg, no_article_after_collective=False)
        else:
            raise SystemExit(f"unknown decoding part {part!r}; use greedy, beam K, lp A, require P, free, once, "
                             f"repeat, person, anyone, ground P, fluent-person P, fusion W, grounded, ends, "
                             f"articles or checkpoint")
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--decode", nargs="+", default=["checkpoint"])
    p.add_argument("--data-dir", default=os.environ.get("DATA", "../shared/data"))
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="coco2017 split (test only for the final, once-only score)")
    args = p.parse_args(argv)
    everyday = read_captions(os.path.join(args.data_dir, "everyday", "captions.jsonl"))
    coco = read_captions(os.path.join(args.data_dir, "coco2017", "annotations", f"captions_{args.split}.json"),
                         os.path.join(args.data_dir, "coco2017", "images"))
    header = (f"{'checkpoint':<28} {'decoding':<34} | everyday: subject  person  repeat  halluc  BLEU-4 | "
              f"{args.split}: BLEU-4  CIDEr-D  repeat  person")
    print(header)
    try:
        for path in args.checkpoints:
            cap = Captioner.load(path, device="cpu")
            for text in args.decode:
                cfg = parse_decoding(text, cap.decode_config)
                e, _ = evaluate(cap, everyday, cfg, meteor=False, progress=False)
                v, _ = evaluate(cap, coco, cfg, meteor=False, progress=False)
                eg, vg = e["grounding"], v["grounding"]
                name = os.path.relpath(path)[-28:]
                print(f"{name:<28} {text:<34} |           {eg['subject_named']:.3f}   {eg['person_hallucination']:.3f}"
                      f"   {eg['repetition']:.3f}   {eg['object_hallucination']:.3f}   {e['metrics']['BLEU-4']:.3f} |"
                      f"      {v['metrics']['BLEU-4']:.4f}   {v['metrics']['CIDEr-D']:.4f}   {vg['repetition']:.3f}"
                      f"   {vg['person_hallucination']:.3f}", flush=True)
    except CaptionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
