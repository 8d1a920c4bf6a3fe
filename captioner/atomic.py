"""Atomic file writes: a reader sees the old file or the whole new one, never a part, even after kill -9.

    with atomic_write("runs/x/last.pt") as f:   # f: a binary file in the same folder, named .tmp-*
        torch.save(payload, f)
    # on leaving: flush, fsync, os.replace onto the path, fsync the folder; on an exception the temp file
    # is removed and the old file is untouched.

One helper for every file the package writes whole: checkpoints, feature-cache entries, exported graphs,
the merged batch results.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator

from .errors import StorageError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, keep_mode: bool = False) -> Iterator[BinaryIO]:
    """A temp file that replaces `path` when the block ends without an exception. `keep_mode`: the new file
    gets the old one's permission bits (else 0644 minus nothing: mkstemp's 0600 is widened to 0644)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    except OSError as exc:
        raise _storage_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), os.stat(path).st_mode & 0o777 if keep_mode and os.path.exists(path) else 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise _storage_error(path, exc) from None
        raise
    fsync_folder(folder)


def save_tensors(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically. torch's zip writer reports a failed write (a full disk) as a RuntimeError
    ("unexpected pos ..."): that is a StorageError here too."""
    import torch

    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except RuntimeError:
        import shutil

        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = f"the write failed: disk full? {free:,} bytes free once the partial file was removed"
        raise _storage_error(os.fspath(path), OSError(reason)) from None


def _storage_error(path: str, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc).strip().splitlines()[0][:200]
    error = StorageError(f"{path}: could not write ({reason}); "
                         f"{'the previous file is unchanged' if os.path.exists(path) else 'nothing was written'}")
    error.errno = exc.errno
    return error


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (not possible on every OS / filesystem: then a no-op)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
