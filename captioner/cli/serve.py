"""`captioner serve`: its flags and handler. The app itself (app.py, gradio) is imported only when it runs,
so building the CLI's parser imports neither gradio nor torch."""
from __future__ import annotations

import argparse

from ..defaults import DEFAULT_CONCURRENCY, DEFAULT_EXAMPLES, DEFAULT_MAX_QUEUE
from ..errors import ConfigError, require_extra
from .common import add_model_flags, checkpoint_path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="start the web app (Gradio) on http://HOST:PORT",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_flags(s)
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 for the whole network")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--share", action="store_true", help="also open a public *.gradio.live link (needs internet)")
    s.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests captioned at once")
    s.add_argument("--max-queue", dest="max_queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="requests allowed to wait; more are turned away")
    s.add_argument("--examples", default=DEFAULT_EXAMPLES, help="folder of clickable example images and clips")
    return s


def run(args: argparse.Namespace) -> int:
    require_extra("gradio", "app", "the web app")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    from ..app import launch

    launch(checkpoint_path(args.checkpoint), host=args.host, port=args.port, share=args.share,
           device=args.device, engine=args.engine, examples_dir=args.examples, concurrency=args.concurrency,
           max_queue=args.max_queue)
    return 0
