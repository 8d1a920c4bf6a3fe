"""Novel-object captioning on our data, DCC protocol (Hendricks et al., CVPR 2016): can the model name objects
that no training caption mentions?

    python scripts/novel_objects.py [--data ../shared/data/coco2017] [--out runs/novel] [--epochs 25]
                                    [--full]    # also the full-data model with copying (in-domain check)

1. Every training image whose captions mention pizza, bus, racket, umbrella or motorcycle (or their plurals)
   is removed; validation (model selection) and the held-out test split are untouched.
2. The same frozen-EfficientNet-Lite0 LSTM (the default model's recipe) is trained on what is left twice:
   without copying, and with the copy decoder (--copy-nouns 5, captioner/copying.py).
3. On the test split: per held-out word, F1 of mentioning it (generated caption vs references), their average,
   and BLEU-4 / CIDEr-D of the whole split (beam 3, length penalty 1.5; the copy model also with
   --require-object). With --full, the copy model trained on all training images is scored next to
   assets/default.pt, the same recipe without copying.
Prints a Markdown table and writes OUT/novel_objects.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.defaults import default_checkpoint  # noqa: E402
from captioner.config import DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from captioner.datasets import read_captions  # noqa: E402
from captioner.evaluation import generate  # noqa: E402
from captioner.features import default_cache_dir  # noqa: E402
from captioner.inference import Captioner  # noqa: E402
from captioner.metrics import caption_metrics, mention_f1, word_forms  # noqa: E402
from captioner.model import build_model  # noqa: E402
from captioner.nouns import NounSpace, load_table  # noqa: E402
from captioner.training import fit  # noqa: E402
from captioner.vocab import Vocabulary, tokenize  # noqa: E402

HELD_OUT = ("pizza", "bus", "racket", "umbrella", "motorcycle")


def mentions_held_out(captions: list[str]) -> bool:
    forms = set().union(*(word_forms(w) for w in HELD_OUT))
    return any(forms & set(tokenize(c)) for c in captions)


def train(train_set, val_set, out: str, copy: int, epochs: int, held_out: tuple[str, ...] = (),
          copy_hide: float = 1.0) -> str:
    """The default model's recipe (scripts/train_default.sh), optionally with the copy decoder."""
    if os.path.isfile(os.path.join(out, "best.pt")) and os.path.isfile(os.path.join(out, "done")):
        print(f"reusing {out}/best.pt")
        return os.path.join(out, "best.pt")
    tcfg = TrainConfig(epochs=epochs, patience=5, batch_size=64, copy_hide=copy_hide)
    vocab = Vocabulary.build((c for it in train_set.items for c in it.captions), tcfg.min_freq, tcfg.max_vocab)
    if copy:
        vocab = vocab.extend(NounSpace(load_table()).words)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dropout=0.5, hidden_dim=512, embed_dim=256, copy_nouns=copy), len(vocab),
                        vocab=vocab)
    t0 = time.time()
    fit(model, vocab, train_set, val_set, tcfg, out, torch.device("cpu"), cache_dir=default_cache_dir(),
        meta={"data": train_set.source, "train_images": len(train_set.items),
              "held_out_words": list(held_out)}, progress=False, log=print)
    Path(out, "done").write_text(f"{time.time() - t0:.0f} s\n")
    return os.path.join(out, "best.pt")


def score(checkpoint: str, test_set, require_object: bool = False) -> dict:
    cap = Captioner.load(checkpoint, device="cpu")
    cfg = DecodeConfig(require_object=require_object)  # beam 3, length penalty 1.5
    captions = generate(cap, test_set, cfg, cache_dir=default_cache_dir(), progress=False)
    refs = [it.captions for it in test_set.items]
    f1 = {w: mention_f1(refs, captions, w) for w in HELD_OUT}
    metrics = caption_metrics(refs, captions, meteor=False)
    return {"checkpoint": checkpoint, "require_object": require_object, "F1": {w: r["F1"] for w, r in f1.items()},
            "mentions": f1, "average_F1": sum(r["F1"] for r in f1.values()) / len(f1),
            "BLEU-4": metrics["BLEU-4"], "CIDEr-D": metrics["CIDEr-D"]}


def table(rows: list[tuple[str, dict]]) -> str:
    head = "| model | " + " | ".join(HELD_OUT) + " | average F1 | BLEU-4 | CIDEr-D |"
    lines = [head, "|" + "---|" * (len(HELD_OUT) + 4)]
    for name, r in rows:
        f1 = " | ".join(f"{r['F1'][w]:.3f}" for w in HELD_OUT)
        lines.append(f"| {name} | {f1} | {r['average_F1']:.3f} | {r['BLEU-4']:.3f} | {r['CIDEr-D']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco2017"))
    ap.add_argument("--out", default="runs/novel")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--full", action="store_true", help="also train the full-data copy model")
    args = ap.parse_args()
    ann, images = os.path.join(args.data, "annotations"), os.path.join(args.data, "images")
    full = read_captions(os.path.join(ann, "captions_train.json"), images)
    val = read_captions(os.path.join(ann, "captions_val.json"), images)
    test = read_captions(os.path.join(ann, "captions_test.json"), images)
    kept = [it for it in full.items if not mentions_held_out(it.captions)]
    print(f"training images: {len(full.items)}; without the held-out words: {len(kept)}; test images: "
          f"{len(test.items)}, of which mention a held-out word: "
          f"{sum(mentions_held_out(it.captions) for it in test.items)}")
    novel = dataclasses.replace(full, items=kept)
    plain = train(novel, val, f"{args.out}/novel-plain", 0, args.epochs, HELD_OUT)
    copy = train(novel, val, f"{args.out}/novel-copy", 5, args.epochs, HELD_OUT)
    rows = [("LSTM, no copying", score(plain, test)), ("LSTM + copy (K=5)", score(copy, test))]
    rows.append(("LSTM + copy (K=5), --require-object", score(copy, test, True)))
    if args.full:
        rows.append(("full data, no copying (assets/default.pt)", score(default_checkpoint(), test)))
        rows.append(("full data, copy (K=5)", score(train(full, val, f"{args.out}/full-copy", 5, args.epochs), test)))
    print(table(rows))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "novel_objects.json").write_text(json.dumps({"held_out": HELD_OUT, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
