"""Screenshot the web app for the README: serve a checkpoint, caption an example photo in headless Chromium.

    python scripts/screenshot_app.py [--checkpoint CKPT] [--photo assets/examples/surfers.jpg]
                                     [--out assets/app-screenshot.png]

Needs Debian's chromium (apt-get install -y chromium) and the playwright package (dev extra); the same
browser set-up as tests/test_app.py's end-to-end test.
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.app import launch  # noqa: E402
from captioner.defaults import default_checkpoint  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--photo", default=str(ROOT / "assets" / "examples" / "surfers.jpg"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "app-screenshot.png"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(args.checkpoint or default_checkpoint(), port=port, device="cpu", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                            args=FLAGS, viewport={"width": 1280, "height": 1000})
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.locator("#input-image input[type=file]").set_input_files(args.photo)
            page.locator("#input-image img").first.wait_for(timeout=30_000)
            page.locator("#caption-button").click()
            page.wait_for_function("() => (document.querySelector('#best-caption textarea') || {}).value?.trim()",
                                   timeout=60_000)
            time.sleep(1.0)  # let the table, label and toasts settle
            page.screenshot(path=args.out, full_page=True)
            print(f"{args.out}: {page.locator('#best-caption textarea').input_value()!r}")
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
