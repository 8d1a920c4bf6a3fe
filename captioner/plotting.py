"""Learning curves of a training run, drawn from its metrics.jsonl (one record per epoch)."""
from __future__ import annotations

import json
import os

from .errors import CaptionerError

PANELS = (  # (title, metric keys drawn in that panel)
    ("loss", ("train_loss", "val_loss")),
    ("generated-caption scores (val)", ("BLEU-4", "CIDEr-D", "ROUGE-L")),
    ("gradient norm before clipping", ("grad_norm",)),
    ("learning rate", ("lr",)),
)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise CaptionerError(f"{path}: not found; expected a run folder written by `captioner train`")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CaptionerError(f"{path}:{lineno}: not a JSON record") from None
    if not records:
        raise CaptionerError(f"{path}: no epochs recorded yet")
    return records


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the run's curves as a PNG (default <run_dir>/curves.png) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)), fontsize=11)
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
