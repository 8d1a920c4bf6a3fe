"""`captioner train`: its flags; read the data (several sources at once), build, resume or --init the model and
vocabulary, and run `training.fit`. Under torchrun every rank runs this; rank 0 alone speaks. Torch and the
model are imported when the command runs, so building the parser stays light."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..config import DATASET_FORMATS, OBJECTIVES, RNN_TYPES, SCHEDULERS, TEMPORAL, ModelConfig, TrainConfig
from ..errors import ConfigError
from .common import overrides

if TYPE_CHECKING:
    from ..datasets import CaptionSet


def add_parser(sub) -> argparse.ArgumentParser:
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
    m.add_argument("--noun-classes", dest="noun_classes", type=int, metavar="N",
                   help="copy models: a noun's probability sums only the classifier's N most probable classes "
                        "(the rest only hold the softmax's floor, which a noun of many classes sums), 0 = all")
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
    return t


def run(args: argparse.Namespace) -> int:
    from .. import distributed

    device = distributed.rank_device(args.device)
    shard = distributed.join(device)
    try:
        return _train(args, overrides(ModelConfig, args), overrides(TrainConfig, args), shard.rank, device)
    finally:
        distributed.leave()


SOURCE_FLAGS = ("images", "format", "split", "data_weight")


def _per_source(args: argparse.Namespace, flag: str) -> list:
    """A repeatable flag's values, one per --data: none given -> None each; one given -> for every source."""
    values, n = getattr(args, flag) or [], len(args.data)
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConfigError(f"--{flag.replace('_', '-')} given {len(values)} times for {n} --data sources; give it "
                          f"once (for all) or once per --data, in the same order")
    return values


def read_sources(args: argparse.Namespace, log) -> tuple[CaptionSet, list[dict]]:
    """Every --data source read with its own --images / --format / --split, joined into one training set;
    -> the set and, per source, what the checkpoint records of it."""
    from ..datasets import CaptionSet, read_and_report

    columns = [_per_source(args, flag) for flag in SOURCE_FLAGS]
    if len(args.data) > 1 and args.images and len(args.images) == 1:
        raise ConfigError("several --data sources need one --images each (or none: each file's own folder)")
    items, missing, sources = [], [], []
    for data, images, fmt, split, weight in zip(args.data, *columns):
        if weight is not None and weight <= 0:
            raise ConfigError(f"--data-weight must be > 0, got {weight} for {data}")
        part = read_and_report(data, images, fmt, split, "train", log)
        for it in part.items:
            it.weight = weight or 1.0
        items += part.items
        missing += part.missing
        sources.append({"data": os.path.abspath(data), "images": images and os.path.abspath(images),
                        "format": part.format, "split": split, "weight": weight or 1.0,
                        "train_images": len(part.items)})
    if len(sources) > 1:
        log(f"train: {len(items)} images from {len(sources)} sources")
    fmt = "+".join(dict.fromkeys(s["format"] for s in sources))
    return CaptionSet(items, missing, "; ".join(args.data), fmt), sources


def _restore_sources(args: argparse.Namespace, stored: dict) -> None:
    """--resume: the data flags not given again come from the checkpoint (one list entry per source)."""
    sources = stored.get("sources") or ([{k: stored.get(k) for k in ("data", "images", "format", "split")}]
                                        if stored.get("data") else [])
    if args.data is None and sources:
        args.data = [s["data"] for s in sources]
        for flag, key in zip(SOURCE_FLAGS, ("images", "format", "split", "weight")):
            if getattr(args, flag) is None:
                setattr(args, flag, [s.get(key) for s in sources])
    for key in ("val_data", "val_images", "val_split"):
        if getattr(args, key) is None:
            setattr(args, key, stored.get(key))


def describe(model, vocab, device) -> str:
    """One line saying what is being trained."""
    cfg = model.cfg
    decoder = [cfg.rnn]
    if cfg.attention:
        decoder.append("with attention")
    if cfg.is_video:
        decoder.append(f"video model ({cfg.temporal} over {cfg.num_frames} frames)")
    if cfg.copy_nouns:
        decoder.append(f"copying from {cfg.copy_nouns} candidate nouns" + (" (also its input)" if cfg.concepts else "")
                       + (f", each summed over the classifier's {cfg.noun_classes} strongest classes"
                          if cfg.noun_classes else ""))
    words = f"{vocab.generated} words" + (f" + {len(vocab) - vocab.generated} copy-only nouns"
                                          if len(vocab) > vocab.generated else "")
    return (f"model: {cfg.backbone} ({model.encoder.weights_source}, "
            f"{'frozen' if model.encoder.frozen else 'fine-tuning'}) -> {', '.join(decoder)}; "
            f"vocabulary {words}; device {device}")


def _train(args: argparse.Namespace, model_overrides: dict[str, Any], train_overrides: dict[str, Any],
           rank: int, device) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..features import default_cache_dir
    from ..model import build_model
    from ..nouns import NounSpace, load_table
    from ..training import fit
    from ..vocab import Vocabulary

    log = tqdm.write if rank == 0 else (lambda msg: None)
    resume = init = None
    if args.resume and args.init:
        raise ConfigError("give --resume (continue a run) or --init (start a new run from a model), not both")
    if args.init:
        init = load_checkpoint(args.init)
        if model_overrides:
            raise ConfigError(f"--init takes the model from {args.init}; drop the model flags "
                              f"({', '.join(sorted(model_overrides))})")
    if args.resume:
        resume = load_checkpoint(args.resume)
        if "optimizer_state" not in resume:
            raise ConfigError(f"{args.resume}: has no training state to resume from (best.pt is for captioning; "
                              f"resume from last.pt)")
        stored = resume.get("data") or {}
        _restore_sources(args, stored)
    if not args.data:
        raise ConfigError("--data is required: a caption annotation file (COCO json, Karpathy json, Flickr8k "
                          "token txt, jsonl or csv)")
    train_set, sources = read_sources(args, log)
    val_set = None
    if args.val_data or args.val_split:
        first = sources[0]
        from ..datasets import read_and_report

        val_set = read_and_report(args.val_data or first["data"], args.val_images if args.val_data else first["images"],
                                  first["format"] if not args.val_data else None, args.val_split, "val", log)
    else:
        log("warning: no --val-data: no validation BLEU; best.pt will be the lowest-training-loss epoch")

    if resume is not None:
        model, vocab = model_from_checkpoint(resume, args.resume)
        tcfg = TrainConfig.from_dict({**resume["train_config"], **train_overrides})
    elif init is not None:
        model, vocab = model_from_checkpoint(init, args.init)
        if model.fluent is not None:  # training makes one decoder; a fluent one is paired with it when shipped
            log(f"note: {args.init} also has a fluent decoder (fluent.py); the new run trains and keeps its "
                f"grounded decoder only")
            model.fluent = None
        tcfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **train_overrides})
    else:
        mcfg = ModelConfig.from_dict({**ModelConfig().to_dict(), **model_overrides})
        tcfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **train_overrides})
        vocab = Vocabulary.build((c for it in train_set.items for c in it.captions), tcfg.min_freq, tcfg.max_vocab)
        if mcfg.copy_nouns:  # the table's nouns join the vocabulary as copy-only words
            vocab = vocab.extend(NounSpace(load_table()).words)
        torch.manual_seed(tcfg.seed)  # the initial weights too follow --seed: a rerun is the same run
        model = build_model(mcfg, len(vocab), vocab=vocab)
    if tcfg.objective == "cider":
        if resume is None and init is None:
            raise ConfigError("--objective cider fine-tunes a trained model: give --init CKPT (the best.pt of a "
                              "cross-entropy run)")
    log(describe(model, vocab, device))
    meta = {"sources": sources, "data": sources[0]["data"], "format": train_set.format,
            "train_images": len(train_set.items),
            "val_data": args.val_data and os.path.abspath(args.val_data),
            "val_images": args.val_images and os.path.abspath(args.val_images), "val_split": args.val_split}
    if init is not None:  # the checkpoint keeps describing itself: where its starting weights came from
        meta["init"] = {"checkpoint": os.path.abspath(args.init), "data": init.get("data"),
                        "train_config": init.get("train_config"), "epoch": init.get("epoch"),
                        "scores": init.get("scores")}
    elif resume is not None and stored.get("init"):
        meta["init"] = stored["init"]
    summary = fit(model, vocab, train_set, val_set, tcfg, args.out, device, resume=resume,
                  cache_dir=args.cache_dir or default_cache_dir(), meta=meta, progress=not args.quiet, log=log)
    if summary["stopped"]:
        return 130
    log(f"done: best epoch {summary['best_epoch']} (score {summary['best_score'][0]:.4f}); "
               f"{os.path.join(args.out, 'best.pt')} and last.pt written")
    return 0
