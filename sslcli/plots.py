"""PNG plots: training curves of a run folder, and probe accuracy per layer."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def epoch_records(metrics_file: Path) -> list[dict]:
    """The per-epoch records of a metrics.jsonl (those with 'epoch_seconds')."""
    if not metrics_file.is_file():
        return []
    rows = []
    for line in metrics_file.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # blank, or cut short by a kill
            continue
    return [r for r in rows if isinstance(r, dict) and "epoch_seconds" in r]


def plot_curves(run: Path, out: Path | None = None) -> Path | None:
    """curves.png: loss, learning rate and the method's own accuracies against epochs."""
    records = epoch_records(run / "metrics.jsonl")
    if not records:
        return None
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    accuracies = sorted({k for r in records for k in r if k.endswith("acc") or k.endswith("top1")})
    panels = [("loss", ["loss"]), ("learning rate", ["lr"])] + ([("accuracy", accuracies)] if accuracies else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            values = [r.get(key) for r in records]
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if title == "accuracy":
            ax.set_ylim(0, 1)
            ax.legend(fontsize=8)
    fig.suptitle(run.name, fontsize=10)
    fig.tight_layout()
    out = out or run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_probe(rows: list[dict], out: Path, title: str) -> Path:
    """Top-1 and top-5 probe accuracy for each layer, in network order."""
    plt = _pyplot()
    layers = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(layers) + 2.5, 3.6))
    for key, marker in (("top1", "o"), ("top5", "s")):
        ax.plot(layers, [r[key] for r in rows], marker=marker, label=key)
        for x, r in zip(layers, rows):
            ax.annotate(f"{r[key]:.2f}", (x, r[key]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("val accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
