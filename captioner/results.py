"""The results file of `captioner batch`: an append-only log (.jsonl or .csv) that a rerun resumes from, one
locked writer, torn-tail repair, and the atomic final merge (see batch.py's docstring for the guarantees)."""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .atomic import atomic_write
from .errors import ConfigError, StorageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per output is then the user's job
    fcntl = None

OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
# log_prob: the model's log-probability of the caption; score: what the search ranked it by (length-normalised).
COLUMNS = ("path", "caption", "log_prob", "score", "captions", "model", "error")
# Outputs written before rows had log_prob: their `score` was the log-probability (upgrade_layout).
LEGACY_COLUMNS = ("path", "caption", "score", "captions", "model", "error")

def output_format(out: str) -> str:
    ext = os.path.splitext(out)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ConfigError(f"output {out!r} has extension {ext or '(none)'!r}; choose one of: "
                          f"{', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[ext]


def check_output(out: str) -> str:
    """Before any work: the output's format is known and its folder exists and takes new files (the final
    rewrite is a temp file in that folder). Returns the format."""
    fmt = output_format(out)
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(f"output {out!r} is a folder; expected a .jsonl or .csv file path")
    if not os.path.isdir(folder):
        raise ConfigError(f"output folder {folder!r} does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        if os.path.exists(out):
            with open(out, "ab"):
                pass
    except OSError as exc:
        raise ConfigError(f"output {out!r} is not writable ({exc.strerror or exc})") from None
    return fmt


def part_path(out: str, rank: int, world: int) -> str:
    return f"{out}.part-{rank}-of-{world}"


def existing_parts(out: str) -> list[str]:
    """Part files of any world size, in (world, rank) order."""
    def key(p: str):
        rank, world = p.rsplit(".part-", 1)[1].split("-of-")
        return int(world), int(rank)
    parts = [p for p in glob.glob(glob.escape(out) + ".part-*-of-*") if p.rsplit("-of-", 1)[1].isdigit()]
    return sorted(parts, key=key)


class OutputFile:
    """Reads an output file as (offset, raw bytes, row) records. A torn tail (bytes after the last newline:
    a kill in mid-write; we only ever append whole newline-terminated rows) is not a record; `end` is where
    the valid data ends. A complete record that does not parse is not ours: an error, never truncated."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt, self.end = path, fmt, 0

    def records(self) -> Iterator[tuple[int, bytes, dict]]:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            for offset, raw in _raw_records(f, self.fmt):
                row = self._parse(raw, offset)
                self.end = offset + len(raw)
                if row is not None:
                    yield offset, raw, row

    def _parse(self, raw: bytes, offset: int) -> dict | None:
        text = raw.decode("utf-8", "surrogateescape")
        try:
            if self.fmt == "csv":
                values = next(csv.reader(io.StringIO(text)))
                if offset == 0:
                    if tuple(values) != COLUMNS:
                        raise ValueError(f"header {','.join(values)[:80]!r}, expected {','.join(COLUMNS)!r}")
                    return None
                if len(values) != len(COLUMNS):
                    raise ValueError(f"{len(values)} columns, expected {len(COLUMNS)}")
                return dict(zip(COLUMNS, values))
            row = json.loads(text)
            if not isinstance(row, dict) or "path" not in row or "model" not in row:
                raise ValueError("a row needs path and model")
            return row
        except (ValueError, csv.Error) as exc:
            raise ConfigError(f"{self.path}: not a captioner batch output (byte {offset}: {exc}); choose "
                              f"another --out or fix the file") from None


def _raw_records(f: io.BufferedReader, fmt: str) -> Iterator[tuple[int, bytes]]:
    """Newline-terminated records. A CSV record spans lines while a quoted field is open (odd quote count)."""
    offset, buf = 0, b""
    for line in iter(f.readline, b""):
        if not line.endswith(b"\n"):
            return  # torn tail
        buf += line
        if fmt == "csv" and buf.count(b'"') % 2:
            continue
        yield offset, buf
        offset, buf = offset + len(buf), b""


@dataclass
class Done:
    """What earlier runs left in the output: path -> whether its (newest) row is an error."""

    failed: dict[str, bool] = field(default_factory=dict)
    rows: int = 0
    superseded: bool = False  # some path has more than one row (a retry, or a run killed before its rewrite)


def load_done(files: Sequence[OutputFile], model_id: str) -> Done:
    """Read every earlier row, oldest file first (newer rows win). Rows from another model are an error:
    one file must not mix captions from two models."""
    done = Done()
    for f in files:
        for _, _, row in f.records():
            _same_model(f.path, row, model_id)
            done.superseded |= row["path"] in done.failed
            done.failed[row["path"]] = bool(row.get("error"))
            done.rows += 1
    return done


def _same_model(path: str, row: dict, model_id: str) -> None:
    if row.get("model") != model_id:
        raise ConfigError(f"{path} holds rows from model {row.get('model')!r}, not {model_id!r}; write to "
                          f"another --out (or move the old one away)")


# Output files this process holds locked. Forked DataLoader workers inherit the descriptors, and a flock
# lives as long as any copy: after a kill -9 of the main process the orphaned workers (which notice only
# seconds later) would keep the output locked and refuse the rerun. Workers close their copies first thing.
_LOCKED_FDS: set[int] = set()


class ResultWriter:
    """Appends rows to one output file: locked against a second run, the torn tail cut off, one unbuffered
    write + fsync per call."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt = path, fmt
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise ConfigError(f"{path} is being written by another batch run; wait for it or choose "
                                  f"another --out") from None
            _LOCKED_FDS.add(self.fd)

    def repair(self, end: int) -> bool:
        """Cut a torn tail (bytes after the last complete record); write the CSV header into an empty file.
        A file with no complete record is only cut if its bytes could begin one of our files."""
        size = os.fstat(self.fd).st_size
        if end == 0 and size:
            with open(self.path, "rb") as f:
                head = f.read(16)
            ours = (",".join(COLUMNS) if self.fmt == "csv" else '{"path": ').encode()
            if not (head.startswith(ours) or ours.startswith(head)):
                raise ConfigError(f"{self.path}: not a captioner batch output (starts {head!r}); choose "
                                  f"another --out")
        torn = size > end
        if torn:
            os.ftruncate(self.fd, end)
        if end == 0 and self.fmt == "csv":
            self._append(",".join(COLUMNS) + "\n")
        return torn

    def write(self, rows: Sequence[dict]) -> None:
        if rows:
            self._append(format_rows(rows, self.fmt))

    def _append(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        before = os.fstat(self.fd).st_size
        try:
            while data:  # O_APPEND: each write lands at the end; loop only on a short write
                data = data[os.write(self.fd, data):]
            os.fsync(self.fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # drop the part of this batch that got in: no torn row left
                os.ftruncate(self.fd, before)
            raise StorageError(f"{self.path}: could not write results ({exc.strerror or exc}); every row "
                               f"written before is kept: make room and rerun the same command to continue") from None

    def close(self) -> None:
        _LOCKED_FDS.discard(self.fd)
        os.close(self.fd)  # also releases the lock

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_rows(rows: Sequence[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        nbest = json.dumps(r["captions"], ensure_ascii=False) if r.get("captions") else ""
        w.writerow([r["path"], r["caption"] or "", _cell(r.get("log_prob")), _cell(r.get("score")), nbest,
                    r["model"], r["error"] or ""])
    return buf.getvalue()


def _cell(value) -> str:
    return "" if value is None else str(value)


def upgrade_layout(path: str, fmt: str, model_id: str) -> bool:
    """An output written before rows had `log_prob` (its `score` was the log-probability) is rewritten once,
    atomically and under the output's lock, in today's layout: log_prob = the old score, score unknown (None).
    Its torn tail, if any, is dropped, as a resumed run would. Rows of another model: refused untouched, as
    load_done refuses them. -> whether it was upgraded."""
    if not os.path.exists(path):
        return False
    with ResultWriter(path, fmt), open(path, "rb") as f:
        first = f.readline()
        try:
            if fmt == "csv":
                if first.rstrip(b"\r\n").decode("utf-8", "replace") != ",".join(LEGACY_COLUMNS):
                    return False
                rows = [dict(zip(LEGACY_COLUMNS, next(csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"))))))
                        for _, raw in _raw_records(f, fmt)]
                for r in rows:
                    r["captions"] = json.loads(r["captions"]) if r["captions"] else None
                    r["score"] = float(r["score"]) if r["score"] else None
            else:
                try:
                    head = json.loads(first)
                except ValueError:
                    return False  # not an older layout; OutputFile says what it is
                if not isinstance(head, dict) or "log_prob" in head or "score" not in head:
                    return False
                f.seek(0)
                rows = [json.loads(raw) for _, raw in _raw_records(f, fmt)]
            upgraded = [_upgraded(r) for r in rows]
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            raise ConfigError(f"{path}: not a captioner batch output ({type(exc).__name__}: {exc}); choose "
                              f"another --out or fix the file") from None
        for r in rows:
            _same_model(path, r, model_id)
        with atomic_write(path, keep_mode=True) as w:
            if fmt == "csv":
                w.write((",".join(COLUMNS) + "\n").encode())
            w.write(format_rows(upgraded, fmt).encode("utf-8", "surrogateescape"))
    return True


def _upgraded(r: dict) -> dict:
    """A row of the layout before log_prob, in today's (a row already in today's stays as it is)."""
    if "log_prob" in r:
        return r
    out = {"path": r["path"], "caption": r.get("caption") or None, "log_prob": r.get("score"), "score": None,
           "model": r["model"], "error": r.get("error") or None}
    if r.get("captions"):
        out["captions"] = [{"caption": c["caption"], "log_prob": c.get("score"), "score": None} for c in r["captions"]]
    return out


def merge_outputs(out: str, sources: Sequence[str], listing: Iterable[str], fmt: str) -> int:
    """Rewrite `out` atomically from `sources` (oldest first; a path's newest row wins): rows of listed paths
    in listing order, then rows of unlisted paths in their old order. Removes the sources other than `out`.
    Memory: one (file, offset, length) per row, not the rows. Returns the number of rows written."""
    index: dict[str, tuple[int, int, int]] = {}
    for i, src in enumerate(sources):
        for offset, raw, row in OutputFile(src, fmt).records():
            index[row["path"]] = (i, offset, len(raw))
    written = 0
    with contextlib.ExitStack() as stack, atomic_write(out, keep_mode=True) as w:
        files = [stack.enter_context(open(s, "rb")) if os.path.exists(s) else None for s in sources]

        def copy(loc: tuple[int, int, int]) -> None:
            f = files[loc[0]]
            f.seek(loc[1])
            w.write(f.read(loc[2]))

        if fmt == "csv":
            w.write((",".join(COLUMNS) + "\n").encode())
        for path in listing:
            loc = index.pop(path, None)
            if loc is not None:
                copy(loc)
                written += 1
        for i, src in enumerate(sources):  # paths no longer listed: kept, never silently dropped
            for offset, raw, row in OutputFile(src, fmt).records():
                if index.get(row["path"]) == (i, offset, len(raw)):
                    w.write(raw)
                    del index[row["path"]]
                    written += 1
    for src in sources:
        if os.path.abspath(src) != os.path.abspath(out):
            os.unlink(src)
    return written
