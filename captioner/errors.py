"""Errors a user can cause. The CLI and the app print these as one line; anything else is a bug."""
from __future__ import annotations

import os


class CaptionerError(Exception):
    """Base class: a bad input, flag, file or setting, with a message that names it."""


class ConfigError(CaptionerError, ValueError):
    """A setting has an unknown name or an out-of-range value."""


class DatasetError(CaptionerError, ValueError):
    """An annotation file is missing, malformed, or names no usable image."""


class MediaError(CaptionerError, ValueError):
    """An image or video cannot be read (missing, corrupt, not an image, too large)."""


class CheckpointError(CaptionerError, ValueError):
    """A checkpoint is missing, truncated, corrupt, or not a captioner checkpoint."""


class StorageError(CaptionerError, OSError):
    """A file could not be written (disk full, read-only, not a folder): what was written before is kept."""


def require_extra(module: str, extra: str, what: str) -> None:
    """A one-line error naming the extra to install when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs {module}, which is not installed: pip install 'captioner[{extra}]'")


def check_file(path: str | os.PathLike, kind: str, examples: str) -> str:
    """The path of a media file as a str, or a MediaError saying it is a folder, missing or empty."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder; expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} file "
                         f"(caption a folder with `captioner batch`)")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such {kind} file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty; expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({examples})")
    return path
