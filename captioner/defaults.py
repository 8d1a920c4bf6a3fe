"""Where the default model is: one function every surface (CLI, app, batch, Python API, scripts) asks.

Order: the file named by $CAPTIONER_CHECKPOINT; the model installed with the package (`captioner/assets/
default.pt` in a wheel: the build maps the repository's assets/ folder to the `captioner.assets` package);
the source checkout's `assets/default.pt` (a clone, or an editable install).
"""
from __future__ import annotations

import os

from .errors import ConfigError

ENV_VAR = "CAPTIONER_CHECKPOINT"
CHECKOUT_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")

# the web app (`captioner serve`, app.py)
DEFAULT_EXAMPLES = os.path.join(CHECKOUT_ASSETS, "examples")
DEFAULT_CONCURRENCY = 2  # captioning requests run at once (more just thrash 2 CPU cores)
DEFAULT_MAX_QUEUE = 32  # requests waiting; beyond this Gradio tells the user the queue is full


def _packaged() -> str | None:
    try:
        from importlib.resources import files

        path = files("captioner.assets") / "default.pt"
    except (ImportError, TypeError):  # no such package (a source tree run without installing)
        return None
    return os.fspath(path) if path.is_file() else None


def default_checkpoint() -> str:
    """The default model's path; a one-line ConfigError saying how to get one when there is none."""
    named = os.environ.get(ENV_VAR)
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f"${ENV_VAR} names {named!r}, which is not a file; point it at a checkpoint "
                              f"(.pt) or unset it to use the installed default model")
        return named
    packaged = _packaged()
    if packaged:
        return packaged
    checkout = os.path.join(CHECKOUT_ASSETS, "default.pt")
    if os.path.isfile(checkout):
        return checkout
    raise ConfigError(f"no default model: this install has no captioner/assets/default.pt; reinstall captioner "
                      f"from its wheel or repository, set ${ENV_VAR} to a checkpoint, or pass --checkpoint")


def resolve_checkpoint(path: str | os.PathLike | None) -> str:
    """`path` if given, else the default model."""
    return os.fspath(path) if path else default_checkpoint()


def checkpoint_origin(path: str | None) -> str:
    """How a command found its model, for `captioner info`."""
    if path:
        return "given on the command line"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return "the installed default model" if _packaged() else "the source checkout's assets/default.pt"
