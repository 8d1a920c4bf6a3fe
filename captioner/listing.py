"""The inputs of `captioner batch`: files, folders (recursive), globs and .txt lists -> a streamed,
deduplicated, deterministic listing of media paths (batch.py's first stage)."""
from __future__ import annotations

import glob
import os
from typing import Iterator, Sequence

from .errors import ConfigError, MediaError
from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

LIST_EXTENSIONS = (".txt",)  # an input file with this extension lists one input path per line
_GLOB_CHARS = set("*?[")

MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def iter_inputs(specs: Sequence[str], extensions: Sequence[str] = MEDIA_EXTENSIONS) -> Iterator[str]:
    """Every input file once, in a deterministic order, streamed. Specs in the order given; a folder: its
    files with one of `extensions` (any case), recursively, sorted by name, hidden entries skipped; a glob:
    its matches sorted (folders walked, files filtered by extension); a .txt file: the paths it lists, one
    per line, relative to the current folder, in its own order (blank lines and #-comments skipped); any
    other path: itself. By default images and videos are both listed."""
    exts = tuple(e.lower() for e in extensions)
    seen: set[str] = set()
    for spec in specs:
        for path in _expand(os.fspath(spec), exts):
            path = os.path.normpath(path)
            if path not in seen:  # a file reached twice (a folder and a glob in it) is captioned once
                seen.add(path)
                yield path


def _expand(spec: str, exts: tuple[str, ...]) -> Iterator[str]:
    if os.path.isdir(spec):
        yield from _walk(spec, exts)
    elif spec.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(spec):
        yield from _read_list(spec)
    elif not os.path.lexists(spec) and _GLOB_CHARS & set(spec):
        for match in sorted(glob.glob(spec, recursive=True)):
            if os.path.isdir(match):
                yield from _walk(match, exts)
            elif match.lower().endswith(exts):
                yield match
    else:
        yield spec  # a file, or one that vanished: it becomes a row with `error`


def _walk(folder: str, exts: tuple[str, ...]) -> Iterator[str]:
    """Depth-first, entries sorted by name; holds one folder's listing per level, never the whole tree.
    Symlinked folders are not followed (no cycles); symlinked files are."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise MediaError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    for e in entries:
        if e.name.startswith("."):  # .DS_Store, macOS ._photo.jpg resource forks, .git, ...
            continue
        if e.is_dir(follow_symlinks=False):
            yield from _walk(e.path, exts)
        elif e.name.lower().endswith(exts) and e.is_file():
            yield e.path


def _read_list(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def check_inputs(specs: Sequence[str]) -> None:
    """Fail before any work on an input that names nothing (a typo), rather than write a row for it."""
    if not specs:
        raise ConfigError("no inputs given; pass image files, folders, globs or a .txt list of paths")
    for spec in map(os.fspath, specs):
        if os.path.lexists(spec):
            continue
        if _GLOB_CHARS & set(spec):
            if next(glob.iglob(spec, recursive=True), None) is None:
                raise ConfigError(f"input {spec!r} matches no files")
        else:
            raise ConfigError(f"input {spec!r} does not exist; expected an image file, a folder, a glob or a "
                              f".txt list of paths")
