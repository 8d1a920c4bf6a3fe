"""Turn a trained run's best.pt into the shipped default model (the last step of scripts/train_default.sh):

1. choose the search on **val**: greedy, and beam 3 / 5 with length penalty 0.5, 1.0, 1.5, the best by val BLEU-4
   (ties: CIDEr-D). Set by construction, not chosen: a content word is said at most once (`no_repeat_words`: no
   "a cat on top of a cat"), no caption ends with an article or preposition (`no_bad_endings`), and a model
   with a person detector says a person only where it fires (`person_gate`);
2. on **everyday** (the development set of photos from outside COCO): for a model with a person detector, the
   least strict `--person-prob` (0.5 .. 0.9) at which at most 15 % of its person-free photos are captioned with
   a person (a stricter gate costs in-domain BLEU, where 80 % of the photos show people); for copy models, how
   sure the CNN must be of a noun before the caption must name it (`--require-object`; off, or 0.3 / 0.5 /
   0.7): the most subjects named minus objects hallucinated, and among the settings within one photo of the
   best, the least forcing (off, else the strictest threshold). The chosen search and these become the
   checkpoint's own `decode_config`, which every command uses;
   With `--fluent CKPT` (a plain decoder trained on COCO alone, fluent.py) the model carries it too, and then
   on everyday: `ground_prob`, how sure the CNN must be of a noun the fluent caption misses before the grounded
   decoder captions instead: the largest (the least handed over: in-domain the fluent decoder scores higher)
   at which at least 70 % of the subjects are named (else the one naming the most); then the fluent decoder's
   person gate, the least strict at which the captions meet the person target above (both chosen without
   fusion); then the fusion weight (`--fusion`: 0, 0.25, 0.5, 1; see fluent.py), measured on val and everyday:
   among the weights that keep both everyday targets and do not lower val BLEU-4, the one with the highest
   everyday CIDEr-D (the photos users bring), 0 if none; then, for copy models, by the same rule, how little
   the CNN must give a COCO object it could recognise before a caption may not name it (`--doubt-prob`: off,
   0.001 .. 0.005; decoding.doubt_ban);
3. score that setting once on the held-out **test** split (`captioner evaluate`'s code path, METEOR included;
   `--no-test` skips it, to compare candidate models on val and everyday before one is shipped) and record it
   as `held_out_scores` (with the grounding rates), with the val and everyday grids beside it;
4. write the checkpoint without training state, decoder weights stored in fp16 (half the size; they are
   loaded back into fp32, and the scores above are measured on exactly these weights), atomically to --out.

    python scripts/ship_default.py runs/default/xent/best.pt --fluent runs/default/fluent/scst/best.pt \
        --out assets/default.pt
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.config import DecodeConfig, ModelConfig
from captioner.datasets import read_and_report
from captioner.errors import CaptionerError
from captioner.evaluation import evaluate, format_table
from captioner.fluent import fluent_payload
from captioner.grounding import format_grounding
from captioner.inference import Captioner
from captioner.run_state import TRAINING_STATE

GRID = [DecodeConfig(method="greedy")] + [DecodeConfig(beam_size=k, length_penalty=lp)
                                           for k in (3, 5) for lp in (0.5, 1.0, 1.5)]
REQUIRE = (0.3, 0.5, 0.7)
PERSON_PROBS = (0.5, 0.6, 0.7, 0.8, 0.9)
PERSON_TARGET = 0.15  # at most this share of person-free photos may be captioned with a person
GROUND_PROBS = (0.7, 0.5, 0.4, 0.3, 0.2)  # --fluent: ground_prob, the least handed over first
SUBJECT_TARGET = 0.70  # --fluent: at least this share of everyday photos should have their subject named
FUSIONS = (0.0, 0.25, 0.5, 1.0)  # --fluent: the weight of the fluent decoder fused into a handed-over caption
DOUBTS = (0.0, 0.001, 0.002, 0.003, 0.005)  # copy models: below this the CNN doubts a COCO object (doubt_prob)


def label(cfg: DecodeConfig) -> str:
    name = "greedy" if cfg.method == "greedy" else f"beam {cfg.beam_size}, lp {cfg.length_penalty}"
    return (name + (f", require p >= {cfg.require_prob}" if cfg.require_object else "")
            + (f", person p >= {cfg.person_prob}" if cfg.person_gate else "")
            + (f", fluent unless p >= {cfg.ground_prob} missed, its person p >= {cfg.fluent_person_prob}, "
               f"fusion {cfg.fusion}" if cfg.fluent else "")
            + (f", doubt p < {cfg.doubt_prob}" if cfg.doubt_prob else ""))


def half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def load_as_shipped(ckpt: dict, out: str) -> Captioner:
    """The Captioner of `ckpt` written and read back, so the scores are measured on the weights as shipped."""
    unscored = out + ".unscored"
    save_checkpoint(unscored, ckpt)
    try:
        return Captioner.load(unscored, device="cpu")
    finally:
        os.unlink(unscored)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the run's best.pt")
    p.add_argument("--out", required=True, help="where to write the shipped checkpoint (e.g. assets/default.pt)")
    p.add_argument("--data-dir", default=os.path.join(os.environ.get("DATA", "../shared/data"), "coco2017"))
    p.add_argument("--fluent", help="a plain decoder's best.pt (trained on COCO alone) to carry beside it")
    p.add_argument("--no-test", action="store_true",
                   help="make every choice and write the model, but do not score the held-out test split (to "
                        "compare candidates on val and everyday before one is shipped; ship it without this)")
    args = p.parse_args(argv)
    try:
        ann, images = os.path.join(args.data_dir, "annotations"), os.path.join(args.data_dir, "images")
        val = read_and_report(os.path.join(ann, "captions_val.json"), images, None, None, "val", print)
        test = read_and_report(os.path.join(ann, "captions_test.json"), images, None, None, "test (held out)", print)
        ckpt = load_checkpoint(args.checkpoint)
        if args.fluent and not ModelConfig.from_dict(ckpt["model_config"]).copy_nouns:
            raise SystemExit("--fluent needs a copy model (its candidate nouns decide which caption is used)")
        for key in TRAINING_STATE:
            ckpt.pop(key, None)
        ckpt["decoder_state"] = half(ckpt["decoder_state"])
        ckpt.pop("fluent", None)  # the grounded decoder's choices are made on it alone
        cap = load_as_shipped(ckpt, args.out)
        model_cfg = cap.model.cfg
        fixed = {"no_repeat_words": True, "no_bad_endings": True, "no_article_after_collective": True,
                 "person_gate": model_cfg.person_gate, "fluent": False}
        rows = []
        for cfg in GRID:
            report, _ = evaluate(cap, val, replace(cfg, **fixed), meteor=False, progress=False)
            rows.append((replace(cfg, **fixed), report["metrics"]))
        print("val decoding grid:\n" + format_table([(label(c), m) for c, m in rows]))
        best, _ = max(rows, key=lambda r: (r[1]["BLEU-4"], r[1]["CIDEr-D"]))
        print(f"chosen on val: {label(best)}")
        everyday_rows = []
        if model_cfg.copy_nouns or model_cfg.person_gate:
            everyday = read_and_report(os.path.join(args.data_dir, "..", "everyday", "captions.jsonl"), None, None,
                                       None, "everyday (development set)", print)

            def on_everyday(cfg):
                report, _ = evaluate(cap, everyday, cfg, meteor=False, progress=False)
                g = report["grounding"]
                everyday_rows.append((cfg, g, report["metrics"]))
                print(f"everyday, {label(cfg)}: subject named {g['subject_named']:.3f}, object hallucination "
                      f"{g['object_hallucination']:.3f}, person where none {g['person_hallucination']:.3f}, "
                      f"BLEU-4 {report['metrics']['BLEU-4']:.4f}")
                return g

            def least_strict_gate(cfg, field):  # that meets the person target (in-domain cost grows with it)
                for p in PERSON_PROBS:
                    gated = replace(cfg, **{field: p})
                    if on_everyday(gated)["person_hallucination"] <= PERSON_TARGET or p == PERSON_PROBS[-1]:
                        return gated

            def best_of(cfg, field, values):
                """Among the values (the first = off) that keep both everyday targets and do not lower val
                BLEU-4 against the first, the one with the highest everyday CIDEr-D (the photos users bring)."""
                tried = []
                for value in values:
                    c = replace(cfg, **{field: value})
                    g, m = on_everyday(c), everyday_rows[-1][2]
                    v = evaluate(cap, val, c, meteor=False, progress=False)[0]["metrics"]
                    print(f"  {field} {value}: val BLEU-4 {v['BLEU-4']:.4f}, CIDEr-D {v['CIDEr-D']:.4f}; "
                          f"everyday CIDEr-D {m['CIDEr-D']:.4f}")
                    tried.append((c, g, m, v))
                keep = [t for t in tried if t[1]["subject_named"] >= SUBJECT_TARGET and t[1]["person_hallucination"]
                        <= PERSON_TARGET and t[3]["BLEU-4"] >= tried[0][3]["BLEU-4"]]
                return max(keep, key=lambda t: t[2]["CIDEr-D"])[0] if keep else tried[0][0]
            if model_cfg.person_gate:
                best = least_strict_gate(best, "person_prob")
            if model_cfg.copy_nouns:
                free = everyday_rows[-1][1] if everyday_rows else on_everyday(best)  # the gate's last row: no require
                scored = [(best, free)] + [(cfg, on_everyday(cfg)) for cfg in
                                           (replace(best, require_object=True, require_prob=p) for p in REQUIRE)]
                gain = [g["subject_named"] - g["object_hallucination"] for _, g in scored]
                # within one photo of the best, the least forcing (forcing costs in-domain BLEU, and a noun the
                # CNN is unsure of should not be forced in): off, then the strictest threshold
                close = [i for i, x in enumerate(gain) if x >= max(gain) - 1 / len(everyday.items)]
                best = scored[close[0] if close[0] == 0 else max(close, key=lambda i: scored[i][0].require_prob)][0]
            if args.fluent:
                try:
                    payload = fluent_payload(load_checkpoint(args.fluent))
                except ValueError as exc:
                    raise SystemExit(f"{args.fluent}: {exc}") from None
                ckpt["fluent"] = {**payload, "decoder_state": half(payload["decoder_state"])}
                cap = load_as_shipped(ckpt, args.out)
                tried = [(p, on_everyday(replace(best, fluent=True, ground_prob=p, fusion=0.0))) for p in GROUND_PROBS]
                met = [p for p, g in tried if g["subject_named"] >= SUBJECT_TARGET]
                best = replace(best, fluent=True, fusion=0.0, ground_prob=met[0] if met else
                               max(tried, key=lambda t: (t[1]["subject_named"], t[0]))[0])
                best = least_strict_gate(best, "fluent_person_prob")  # now on the captions users get
                best = best_of(best, "fusion", FUSIONS)
            if model_cfg.copy_nouns:
                best = best_of(best, "doubt_prob", DOUBTS)
            print(f"chosen on everyday: {label(best)}")
        val_report, _ = evaluate(cap, val, best, meteor=False, progress=False)  # what the choices cost on val
        print("val with the chosen setting:\n" + format_table([(label(best), val_report["metrics"])]) + "\n"
              + format_grounding(val_report["grounding"]))
        ckpt["decode_config"] = best.to_dict()
        if args.no_test:
            save_checkpoint(args.out, ckpt)
            print(f"wrote {args.out}, not scored on the held-out test split (--no-test): not for shipping")
            return 0
        t0 = time.time()
        report, _ = evaluate(cap, test, best, progress=False)
        print("held-out test:\n" + format_table([(label(best), report["metrics"])]) + "\n"
              + format_grounding(report["grounding"]) + f"\n({time.time() - t0:.0f} s)")
        ckpt["held_out_scores"] = {
            "split": f"coco2017 test ({len(test.items)} images, held out)", "decoding": best.to_dict(),
            "metrics": report["metrics"], "grounding": report["grounding"],
            "val_metrics": val_report["metrics"], "val_grounding": val_report["grounding"],
            "everyday_grid": [{"decoding": label(c), **g, "BLEU-4": round(m["BLEU-4"], 4)}
                              for c, g, m in everyday_rows],
            "val_decoding_grid": [{"decoding": label(c), **{k: round(v, 4) for k, v in m.items()
                                                             if isinstance(v, float)}} for c, m in rows]}
        save_checkpoint(args.out, ckpt)
        print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MB)")
    except CaptionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
