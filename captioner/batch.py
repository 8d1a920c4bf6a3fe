"""Batch captioning: thousands of files, resumable, loss-free, sharded across processes with torchrun.

    inputs (files, folders, globs, .txt lists) -> a streamed, deduplicated, deterministic listing
      -> shard (item i goes to rank i % world) -> skip what the output already holds
      -> DataLoader workers: decode (images; videos: F sampled frames) + build_transform, or an error string
                                                                                 (b,3,H,W) or clips + errors
      -> the path every surface shares (Captioner.encode, then .decode_features): the encoder (ONNX Runtime on
         the CPU, fp16 autocast on CUDA) batch by batch, then batched decoding (beam search / greedy /
         sampling) of DECODE_BATCHES batches at once                             hypotheses per image
      -> rows appended to the output, one write + fsync per decoded group

Decoding several batches at once pays for itself: with the two-decoder default (fluent.py) about a quarter of
the inputs are decoded again by the grounded decoder, and on few rows each step of a search costs what reading
the decoders' weights costs, whatever the number of rows (9.6 ms per photo at 32 rows, 5.7 at 128).

The output (.jsonl or .csv) is an append-only log, like a write-ahead log: a group's rows are one write
followed by fsync, so Ctrl-C, SIGTERM or a hard kill loses at most the group in flight; a torn last line
(a kill in mid-write) is cut off on the next start. Rerunning skips every path the output holds (failed
ones too, unless retry_failed). While a run is going, the *last* row for a path is the valid one; a run
that completes rewrites the file atomically (temp file + fsync + os.replace) so it holds one row per path:
listed inputs in listing order, then any older rows for paths no longer listed. With torchrun, rank r
appends to `<out>.part-<r>-of-<world>` and rank 0 merges all parts into `<out>` that way once every rank
has finished (Hadoop's output-committer pattern: per-task files, one commit; the parts must be on a
filesystem rank 0 sees). Parts left by a killed run of any world size are read (skipped) and merged by the
next run that completes.

Where: the listing is listing.py, the results file (log, lock, repair, merge) results.py; this module
loads, captions, runs the loop and sets up torchrun.

Peak memory does not grow with the number of input files beyond one small set of path strings (the
listing's de-duplication and the paths already in the output): the listing is streamed through the
DataLoader's sampler, and at most prefetch_factor x workers batches are in flight.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .config import DecodeConfig
from .decoding import Hypothesis
from .distributed import Shard, any_rank, sum_over_ranks  # noqa: F401 - Shard re-exported: batch's API
from .errors import CaptionerError, ConfigError
from .stopping import stop_requests
from .inference import Captioner
from .listing import MEDIA_EXTENSIONS, check_inputs, iter_inputs  # noqa: F401 - re-exported: batch's API
from .media import MediaDataset, WorkerLoader, collate_media
from .results import (_LOCKED_FDS, Done, OutputFile, ResultWriter, check_output, existing_parts,  # noqa: F401
                      load_done, merge_outputs, part_path, upgrade_layout)


DECODE_BATCHES = 4  # loader batches encoded, then decoded and written together (see the module docstring)

# ----------------------------------------------------------------------------------------------- loading

class LoadedBatch(NamedTuple):
    paths: list[str]
    # The files that loaded, in order: images (b,3,H,W), or a list of (3,H,W) / (F,3,H,W) when clips are in
    # the batch; None if none loaded.
    images: torch.Tensor | list[torch.Tensor] | None
    errors: list[str | None]  # per path: why it could not be read, or None


def collate_loaded(items: list[tuple[str, torch.Tensor | None, str | None]]) -> LoadedBatch:
    return LoadedBatch(*collate_media(items))


def _worker_init(_: int) -> None:
    for fd in list(_LOCKED_FDS):  # see _LOCKED_FDS
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCKED_FDS.clear()
    # The main process decides when to stop (after the batch in hand) and then shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(paths: Iterable[str], transform: Callable, batch_size: int, workers: int,
                device: torch.device, num_frames: int = 16) -> WorkerLoader:
    """Batches of LoadedBatch. `paths` is consumed lazily (it is the sampler: the DataLoader asks it for
    only the next few batches), so the listing is streamed."""
    _check_sizes(batch_size, workers)
    # each file's error is its row's, never the run's
    return WorkerLoader(MediaDataset(transform, num_frames, errors="return"), batch_size=batch_size, sampler=paths,
                        num_workers=workers, collate_fn=collate_loaded, pin_memory=device.type == "cuda",
                        worker_init_fn=_worker_init)


def _check_sizes(batch_size: int, workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (images are never decoded on the main thread), got {workers}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")


# ----------------------------------------------------------------------------------------------- captioning

def model_id(checkpoint: str) -> str:
    """The checkpoint's file name and the start of its content's SHA-256: `best.pt@1a2b3c4d`."""
    h = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{os.path.basename(checkpoint)}@{h.hexdigest()[:8]}"


def batch_rows(batch: LoadedBatch, hyps: list[list[Hypothesis]], vocab, model: str, nbest: bool) -> list[dict]:
    rows, it = [], iter(hyps)
    for path, error in zip(batch.paths, batch.errors):
        row = {"path": path, "caption": None, "log_prob": None, "score": None, "model": model, "error": error}
        if error is None:
            h = next(it)
            row.update(caption=vocab.decode(h[0].tokens), log_prob=round(h[0].log_prob, 4), score=round(h[0].score, 4))
            if nbest:
                row["captions"] = [{"caption": vocab.decode(x.tokens), "log_prob": round(x.log_prob, 4),
                                    "score": round(x.score, 4)} for x in h]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- the run

@dataclass
class Summary:
    out: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stopped: bool = False

    def line(self) -> str:
        n = self.ok + self.failed
        rate = n / self.seconds if self.seconds > 0 else 0.0
        head = "stopped (rerun the same command to continue)" if self.stopped else f"done: {self.out}"
        return (f"{head}: {self.ok} ok, {self.failed} failed, {self.skipped} skipped (already in the output); "
                f"{n} files in {self.seconds:.1f} s, {rate:.1f} files/s")


class _ShardItems:
    """The listing, filtered to this rank's share and to what is not done yet; iterable again (one pass to
    count for the progress bar, one to caption)."""

    def __init__(self, listing: Callable[[], Iterator[str]], shard: Shard, done: Done, retry_failed: bool):
        self.listing, self.shard, self.done, self.retry = listing, shard, done, retry_failed
        self.skipped = 0

    def __iter__(self) -> Iterator[str]:
        self.skipped = 0
        for i, path in enumerate(self.listing()):
            if i % self.shard.world != self.shard.rank:
                continue
            failed = self.done.failed.get(path)
            if failed is None or (failed and self.retry):
                yield path
            else:
                self.skipped += 1


def _upgrade_outputs(paths: list[str], fmt: str, model: str, shard: Shard, log: Callable[[str], None]) -> None:
    """Files in the row layout before log_prob are rewritten in today's before anyone reads them: each rank
    its own part, rank 0 the output and parts left by runs of another world size; then all ranks go on, or
    all stop if one was refused (another model's rows)."""
    refused: CaptionerError | None = None
    try:
        for path in paths:
            if upgrade_layout(path, fmt, model):
                log(f"{path}: rewritten in today's row layout (log_prob = its old score; score, the search's, "
                    f"unknown)")
    except CaptionerError as exc:
        refused = exc
    if any_rank(refused is not None, shard.world):
        raise refused or ConfigError("another rank could not use its output file (see its message)")


def run_batch(cap: Captioner, inputs: Sequence[str], out: str, *, model: str, cfg: DecodeConfig | None = None,
              batch_size: int = 32, workers: int | None = None, retry_failed: bool = False,
              shard: Shard | None = None, extensions: Sequence[str] = MEDIA_EXTENSIONS, progress: bool = True,
              log: Callable[[str], None] = tqdm.write) -> Summary:
    """Caption every input into `out` (see the module docstring). `model` is the id written in each row
    (`model_id(checkpoint)`). Returns this run's counts, summed over ranks."""
    cfg = cfg or cap.decode_config
    cfg.validate()
    shard = shard or Shard()
    fmt = check_output(out)
    check_inputs(inputs)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    _check_sizes(batch_size, workers)
    world = shard.world > 1
    target = part_path(out, shard.rank, shard.world) if world else out
    current = {part_path(out, r, shard.world) for r in range(shard.world)} if world else set()
    stale = [p for p in existing_parts(out) if p not in current]  # left by an earlier run, any world size
    listing = lambda: iter_inputs(inputs, extensions)  # noqa: E731

    t0 = time.time()
    mine = [target] + ([*stale] if not world else [out, *stale] if shard.rank == 0 else [])  # target: out or a part
    _upgrade_outputs(mine, fmt, model, shard, log)
    # Signals are handled until the merge is done too, so a stop never leaves a half-written rewrite behind.
    with stop_requests() as stop_asked, ResultWriter(target, fmt) as writer:
        own = OutputFile(target, fmt)
        done = load_done([OutputFile(p, fmt) for p in [out, *stale] if p != target] + [own], model)
        if writer.repair(own.end):
            log(f"{target}: cut off a torn last line (a run was killed in mid-write)")
        items = _ShardItems(listing, shard, done, retry_failed)
        todo = sum(1 for _ in items)
        summary = Summary(out, skipped=items.skipped)
        if summary.skipped:
            log(f"skipping {summary.skipped} files already in the output"
                + ("" if retry_failed else " (failed ones too; --retry-failed retries them)"))
        desc = f"captioning (rank 0 of {shard.world})" if world else "captioning"
        summary.stopped = _caption_all(cap, items, writer, model, cfg, batch_size, workers, todo, summary,
                                       desc if progress and shard.rank == 0 else None, stop_asked, log)
        # a sum over ranks, and the barrier before rank 0 merges the parts
        counts = sum_over_ranks([int(summary.stopped), summary.ok, summary.failed, summary.skipped], shard.world,
                                torch.int64)
        summary.ok, summary.failed, summary.skipped = counts[1:]
        if counts[0]:  # some rank stopped: nothing is merged; the next run resumes from the parts
            summary.stopped = True
        elif shard.rank == 0 and (world or stale or done.superseded or (done.rows and summary.ok + summary.failed)):
            parts = [part_path(out, r, shard.world) for r in range(shard.world)] if world else []
            merge_outputs(out, [out, *stale, *parts], listing(), fmt)
    summary.seconds = time.time() - t0
    return summary


def _caption_all(cap: Captioner, items: Iterable[str], writer: ResultWriter, model: str, cfg: DecodeConfig,
                 batch_size: int, workers: int, todo: int, summary: Summary, progress: str | None,
                 stop_asked: Callable[[], str | bool], log: Callable[[str], None]) -> bool:
    """The loop: batches encoded one at a time, decoded and written DECODE_BATCHES at a time (and whatever is
    in hand when the input ends or a stop is asked), rows on disk before the next group is taken. `progress`:
    the bar's label, None for no bar. True if stopped."""
    nbest = cfg.num_captions > 1
    if todo == 0:  # a rerun of a finished job: no workers to start
        return False
    loader = make_loader(items, cap.transform, batch_size, workers, cap.device, cap.model.cfg.num_frames)
    bar = tqdm(total=todo, unit="file", desc=progress, disable=progress is None, dynamic_ncols=True, smoothing=0.1)
    group: list[tuple[LoadedBatch, torch.Tensor | None]] = []  # encoded, not yet decoded

    def write_group() -> None:
        feats = [f for _, f in group if f is not None]
        hyps = iter(cap.decode_features(torch.cat(feats), cfg) if feats else [])  # per loaded file, in order
        rows = [row for batch, f in group
                for row in batch_rows(batch, [next(hyps) for _ in range(0 if f is None else len(f))], cap.vocab,
                                      model, nbest)]
        writer.write(rows)
        n_failed = sum(r["error"] is not None for r in rows)
        summary.failed += n_failed
        summary.ok += len(rows) - n_failed
        bar.update(len(rows))
        group.clear()

    for batch in loader:
        if stop_asked():  # the signal came while waiting for this batch: start no new work
            break
        group.append((batch, None if batch.images is None else cap.encode(batch.images, classify=False)[0]))
        if len(group) == DECODE_BATCHES:
            write_group()
        if stop_asked():
            break
    if group:  # the input ended, or a stop came: what is encoded is decoded and written, nothing lost
        write_group()
    stopped = stop_asked()
    bar.close()
    if stopped:
        log(f"{stopped}: stopped after the batch in hand; everything captioned so far is in {writer.path}")
    return bool(stopped)
