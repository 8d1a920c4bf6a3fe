"""Benchmark: batched decoding (captioner.decoding.decode) against a one-image-at-a-time beam search.

Encodes N real images once (through the feature cache), so only decoding is timed, then times side by side:
greedy and beam 3 / beam 5 batched (length penalty 0, one caption), and the tutorials' loop: per image a Python
list of K (tokens, score, state) beams, one decoder.step on the K beams stacked, topk over K*V. The loop below
follows the package's beam-search rules exactly (raw sum of log-probs; PAD/BOS/UNK banned; EOS banned before
min_len words; EOS kept only when ranked within the top K of the 2K candidates; an image stops once its best
live beam cannot beat its best finished caption; live beams are the fallback at max_len), so both must give
identical captions, which is asserted, up to ties: two captions the model scores alike (a copy model's two
names of one ImageNet class) are counted and shown, not a disagreement. Beam K batched is also timed with the decoder stepping nn.LSTM
(`CaptionDecoder.use_gate_table = False`) instead of its per-word table of input gates (decoder._lstm_step):
same captions asserted, speed-up printed.

    python scripts/bench_decode.py --checkpoint runs/demo/best.pt [--images DIR_OR_ANNOTATION] [--n 256]
        [--batch-size 64] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from captioner.checkpoint import load_checkpoint, model_from_checkpoint
from captioner.config import DecodeConfig
from captioner.datasets import read_captions
from captioner.decoding import decode
from captioner.errors import CaptionerError
from captioner.features import default_cache_dir, encode_images
from captioner.inference import resolve_device

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(source: str | None, n: int, image_root: str | None = None) -> list[str]:
    """The first n images of a folder (sorted) or an annotation file; default coco2017 val then test."""
    if source is None:
        root = DATA / "coco2017"
        paths = [it.image for split in ("val", "test") for it in
                 read_captions(str(root / "annotations" / f"captions_{split}.json"), str(root / "images")).items]
    elif os.path.isdir(source):
        paths = sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTS))
    else:
        paths = [it.image for it in read_captions(source, image_root).items]
    if len(paths) < n:
        raise SystemExit(f"{source or DATA / 'coco2017'}: only {len(paths)} images, --n asks for {n}")
    return paths[:n]


def batched(decoder, feats: torch.Tensor, vocab, cfg: DecodeConfig, batch_size: int) -> list[list[int]]:
    """Best caption (word ids) per row of feats (N,P,E), batch_size images per decode call."""
    out = []
    for s in range(0, len(feats), batch_size):
        out.extend(h[0].tokens for h in decode(decoder, feats[s: s + batch_size], vocab, cfg))
    return out


@torch.no_grad()
def beam_one(decoder, feat: torch.Tensor, vocab, K: int, max_len: int = 20, min_len: int = 1) -> list[int]:
    """Tutorial-style beam search over one image's features (P,E): best caption's word ids by raw log-prob."""
    banned = [vocab.pad_id, vocab.bos_id, vocab.unk_id]
    eos = vocab.eos_id
    beams = [([], 0.0, decoder.init_state(feat[None]))]  # (words, score, state with 1 row)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        tokens = torch.tensor([w[-1] if w else vocab.bos_id for w, _, _ in beams])  # (k,)
        state = {key: torch.cat([st[key] for _, _, st in beams]) for key in beams[0][2]}  # k rows stacked
        log_probs, state = decoder.step(tokens, state)  # (k,V)
        log_probs = log_probs.clone()
        log_probs[:, banned] = float("-inf")
        if len(beams[0][0]) < min_len:
            log_probs[:, eos] = float("-inf")
        V = log_probs.size(1)
        cand = torch.tensor([s for _, s, _ in beams])[:, None] + log_probs  # (k,V) float32, like the batch
        top_score, top_idx = cand.view(-1).topk(min(2 * K, cand.numel()))
        live = []
        for rank, (s, i) in enumerate(zip(top_score.tolist(), top_idx.tolist())):
            if s == float("-inf"):
                break
            b, w = divmod(i, V)
            if w == eos:
                if rank < K:  # an EOS below rank K would not have survived as one of K beams
                    finished.append((beams[b][0], s))
            elif len(live) < K:
                live.append((beams[b][0] + [w], s, {key: v[b: b + 1] for key, v in state.items()}))
        beams = live
        finished.sort(key=lambda f: -f[1])  # stable: among equal scores the earliest wins
        # Log-probs are <= 0, so no live beam can end above its score now.
        if not beams or (finished and beams[0][1] <= finished[0][1]):
            break
    return finished[0][0] if finished else beams[0][0]


@torch.no_grad()
def caption_log_prob(decoder, feat: torch.Tensor, words: list[int], vocab) -> float:
    """The model's log-probability of one caption (word ids, then EOS) for one image's features (P,E)."""
    state, total = decoder.init_state(feat[None]), 0.0
    for prev, word in zip([vocab.bos_id] + words, words + [vocab.eos_id]):
        log_probs, state = decoder.step(torch.tensor([prev]), state)
        total += float(log_probs[0, word])
    return total


def timed(fn, repeats: int):
    """((wall, CPU) seconds of the fastest of `repeats` runs, result of the last run). CPU seconds help read a
    run on a busy machine: with one thread they barely move when other processes compete for the cores."""
    best, result = (float("inf"), 0.0), None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    return best, result


def without_gate_table(dec, fn):
    """fn() with the decoder stepping nn.LSTM rather than its table of input gates."""
    dec.use_gate_table = False
    try:
        return fn()
    finally:
        dec.use_gate_table = True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", default=None, help="image folder or annotation file (default: coco2017 val+test)")
    ap.add_argument("--image-root", default=None, help="images folder of an annotation file (default: its folder)")
    ap.add_argument("--n", type=int, default=256, help="images to caption")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batched decode call")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method; the fastest is reported")
    ap.add_argument("--beams", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=default_cache_dir())
    args = ap.parse_args(argv)

    try:
        device = resolve_device(args.device)
        model, vocab = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        paths = list_images(args.images, args.n, args.image_root)
        feats = encode_images(model.to(device).eval(), paths, device, cache_dir=args.cache_dir, progress=False)
    except CaptionerError as exc:
        raise SystemExit(f"error: {exc}") from None
    feats = feats.to(device).float()  # (N,P,E), as Captioner.decode_features feeds decode
    dec = model.decoder
    print(f"{len(paths)} images, features {tuple(feats.shape)}, vocabulary {len(vocab)}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch_size}, best of {args.repeats}")

    def beam_cfg(k: int) -> DecodeConfig:
        return DecodeConfig(method="beam", beam_size=k, length_penalty=0.0, num_captions=1, suppress_unk=True)

    methods = {"greedy batched": lambda f: batched(dec, f, vocab, DecodeConfig(method="greedy"), args.batch_size)}
    for k in args.beams:
        methods[f"beam {k} batched"] = lambda f, k=k: batched(dec, f, vocab, beam_cfg(k), args.batch_size)
        methods[f"beam {k} one-at-a-time"] = lambda f, k=k: [beam_one(dec, x, vocab, k) for x in f]
        methods[f"beam {k} nn.LSTM step"] = lambda f, k=k: without_gate_table(
            dec, lambda: batched(dec, f, vocab, beam_cfg(k), args.batch_size))
    for fn in methods.values():  # warm-up: allocator, thread pool, first-call overheads
        fn(feats[:8])
    seconds, captions = {}, {}
    for name, fn in methods.items():
        seconds[name], captions[name] = timed(lambda fn=fn: fn(feats), args.repeats)

    n = len(feats)
    print(f"\n{'method':<24}{'seconds':>10}{'captions/s':>12}{'CPU s':>10}")
    for name, (s, cpu) in seconds.items():
        print(f"{name:<24}{s:>10.3f}{n / s:>12.1f}{cpu:>10.3f}")
    print()

    def speedup(slow: str, fast: str) -> str:
        return (f"{seconds[slow][0] / seconds[fast][0]:.1f}x (CPU time: "
                f"{seconds[slow][1] / max(seconds[fast][1], 1e-9):.1f}x)")

    last = f"beam {args.beams[-1]} one-at-a-time"
    for k in args.beams:
        print(f"beam {k}: batched is {speedup(f'beam {k} one-at-a-time', f'beam {k} batched')} the one-at-a-time loop")
        print(f"beam {k}: the gate-table LSTM step is {speedup(f'beam {k} nn.LSTM step', f'beam {k} batched')} "
              f"nn.LSTM")
    print(f"greedy batched is {speedup(last, 'greedy batched')} the {last} loop")

    mismatches = {}
    for k in args.beams:
        a, b = captions[f"beam {k} batched"], captions[f"beam {k} one-at-a-time"]
        # A copy model gives two names of one ImageNet class the same probability ("tram", "streetcar"): the
        # two searches may break such a tie differently. A difference is a disagreement only if the model
        # scores the two captions differently.
        differ = [i for i in range(n) if a[i] != b[i]]
        ties = [i for i in differ if abs(caption_log_prob(dec, feats[i], a[i], vocab)
                                         - caption_log_prob(dec, feats[i], b[i], vocab)) < 1e-4]
        mismatches[k] = [i for i in differ if i not in ties]
        if ties:
            print(f"beam {k}: {len(ties)} captions differ between the two searches only by a tie (equal "
                  f"log-probability), e.g. {vocab.decode(a[ties[0]])!r} / {vocab.decode(b[ties[0]])!r}")
        lstm = captions[f"beam {k} nn.LSTM step"]
        print(f"beam {k}: {sum(x == y for x, y in zip(a, lstm))}/{n} captions identical with the nn.LSTM step")
        assert a == lstm, "the gate-table LSTM step and nn.LSTM disagree"
        print(f"beam {k}: {n - len(differ)}/{n} captions identical, {len(mismatches[k])} disagreements")
        for i in mismatches[k][:5]:
            print(f"  {paths[i]}\n    batched: {vocab.decode(a[i])}\n    one:     {vocab.decode(b[i])}")
    assert not any(mismatches.values()), "batched and one-at-a-time beam search disagree"


if __name__ == "__main__":
    main()
