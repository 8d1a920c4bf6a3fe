"""`captioner` command line. One module per subcommand, each with `add_parser(subparsers)` and `run(args)`:
train.py, caption.py, evaluate.py, batch.py, serve.py, plot.py, export.py, info.py; the flags they share are in
common.py. Building the parser imports no torch (`captioner --help` answers at once); a subcommand imports
what it needs when it runs.

User errors (bad flags, files, checkpoints) print one line `captioner: error: ...` and exit 2; they
never show a traceback. Output piped into a reader that stops early (`captioner batch ... | head`) ends the
command quietly, as it does for the shell's own tools. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Sequence

from ..errors import CaptionerError
from . import batch, caption, evaluate, export, info, plot, serve, train

# in the order `captioner --help` lists them
SUBCOMMANDS = {"train": train, "caption": caption, "evaluate": evaluate, "plot": plot, "export": export,
               "info": info, "batch": batch, "serve": serve}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning: train, caption, evaluate.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (an OSError, so first) stdout's reader went away: stop, and let exit not flush again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool its pipe's reader stopped
    except OSError as exc:  # the file system said no (a folder that is a file, a vanished input, a full disk)
        if exc.filename is None and exc.errno not in _STORAGE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"captioner: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
