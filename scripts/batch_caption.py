"""Thin entry point for `captioner batch` (the logic lives in captioner.batch):

    python scripts/batch_caption.py photos/ --out results.jsonl --checkpoint runs/demo/best.pt
    torchrun --nproc_per_node 2 scripts/batch_caption.py photos/ --out results.jsonl
"""
import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
