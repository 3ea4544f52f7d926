"""Accuracy against rounds and against cumulative upload (MB), one line per run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

History = Sequence[Mapping[str, Any]]


def _series(history: History, x_key: str, y_key: str = "test_acc") -> tuple[list, list]:
    pts = [(h[x_key], h[y_key]) for h in history if y_key in h]
    return [p[0] for p in pts], [100.0 * p[1] for p in pts]


def plot_runs(histories: Mapping[str, History], folder: str | Path, *, title: str = "",
              prefix: str = "") -> list[Path]:
    """Write ``<prefix>accuracy_vs_rounds.png`` and ``<prefix>accuracy_vs_upload.png``.

    Args:
        histories: label -> round records (with ``round``, ``cum_upload_mb`` and, at
            evaluation rounds, ``test_acc``).
        folder: where the PNGs go.
    Returns:
        the two paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for x_key, xlabel, name in (("round", "round", "accuracy_vs_rounds.png"),
                                ("cum_upload_mb", "cumulative upload (MB, counted)",
                                 "accuracy_vs_upload.png")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for label, history in histories.items():
            xs, ys = _series(history, x_key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=2.5, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("global test accuracy (%)")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{prefix}{name}"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
