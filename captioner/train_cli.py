"""`captioner train`: read the data, build (or resume) the model and vocabulary, run `training.fit`."""
from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import ModelConfig, TrainConfig
from .datasets import CaptionSet, read_and_report
from .errors import ConfigError
from .features import default_cache_dir
from .model import build_model
from .nouns import NounSpace, load_table
from .training import fit
from .vocab import Vocabulary


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


def describe(model, vocab: Vocabulary, device: torch.device) -> str:
    """One line saying what is being trained."""
    cfg = model.cfg
    decoder = [cfg.rnn]
    if cfg.attention:
        decoder.append("with attention")
    if cfg.is_video:
        decoder.append(f"video model ({cfg.temporal} over {cfg.num_frames} frames)")
    if cfg.copy_nouns:
        decoder.append(f"copying from {cfg.copy_nouns} candidate nouns" + (" (also its input)" if cfg.concepts else ""))
    words = f"{vocab.generated} words" + (f" + {len(vocab) - vocab.generated} copy-only nouns"
                                          if len(vocab) > vocab.generated else "")
    return (f"model: {cfg.backbone} ({model.encoder.weights_source}, "
            f"{'frozen' if model.encoder.frozen else 'fine-tuning'}) -> {', '.join(decoder)}; "
            f"vocabulary {words}; device {device}")


def cmd_train(args: argparse.Namespace, model_overrides: dict[str, Any], train_overrides: dict[str, Any]) -> int:
    device = distributed.rank_device(args.device)
    shard = distributed.join(device)
    try:
        return _train(args, model_overrides, train_overrides, shard.rank, device)
    finally:
        distributed.leave()


def _train(args: argparse.Namespace, model_overrides: dict[str, Any], train_overrides: dict[str, Any],
           rank: int, device: torch.device) -> int:
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
        val_set = read_and_report(args.val_data or first["data"], args.val_images if args.val_data else first["images"],
                                  first["format"] if not args.val_data else None, args.val_split, "val", log)
    else:
        log("warning: no --val-data: no validation BLEU; best.pt will be the lowest-training-loss epoch")

    if resume is not None:
        model, vocab = model_from_checkpoint(resume, args.resume)
        tcfg = TrainConfig.from_dict({**resume["train_config"], **train_overrides})
    elif init is not None:
        model, vocab = model_from_checkpoint(init, args.init)
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
