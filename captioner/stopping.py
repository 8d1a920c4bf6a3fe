"""Clean stops: SIGINT/SIGTERM ask a long loop (training, batch captioning) to stop between steps."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop checks between batches; a second Ctrl-C stops at once.
    The handler only sets the flag (printing from a signal handler can hit a reentrant-write error)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["stop"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
