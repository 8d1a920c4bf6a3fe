"""Learning curves of a training run, drawn from its metrics.jsonl (one record per epoch)."""
from __future__ import annotations

import json
import os

from .errors import CaptionerError

PANELS = (  # (title, metric keys drawn in that panel)
    ("loss", ("train_loss", "val_loss")),
    ("generated-caption scores", ("BLEU-4", "CIDEr-D", "ROUGE-L", "train_cider")),
    ("gradient norm before clipping", ("grad_norm",)),
    ("learning rate", ("lr",)),
)
LABELS = {"BLEU-4": "val BLEU-4", "CIDEr-D": "val CIDEr-D", "ROUGE-L": "val ROUGE-L",
          "train_cider": "CIDEr-D of train samples (SCST)"}


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


def plot_run(run_dirs: str | list[str], out: str | None = None) -> str:
    """Write the curves of one run, or of runs that continue each other (a cross-entropy run, then the
    self-critical run started from it with --init), as a PNG (default <first run_dir>/curves.png); returns
    its path. Later runs' epochs follow the earlier ones', with a dashed line where each one starts."""
    from .errors import require_extra

    require_extra("matplotlib", "plot", "captioner plot")
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dirs = [run_dirs] if isinstance(run_dirs, str) else list(run_dirs)
    records, starts = [], []
    for run_dir in run_dirs:
        offset = records[-1]["epoch"] if records else 0
        starts.append((offset, os.path.basename(os.path.abspath(run_dir))))
        records += [{**r, "epoch": r["epoch"] + offset} for r in read_metrics(run_dir)]
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (title, keys) in zip(axes, PANELS):
        drawn = 0
        for key in keys:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=LABELS.get(key, key))
                drawn += 1
        for start, _ in starts[1:]:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn > 1:
            ax.legend(fontsize=8)
    fig.suptitle(" -> ".join(name for _, name in starts), fontsize=11)
    fig.tight_layout()
    out = out or os.path.join(run_dirs[0], "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
