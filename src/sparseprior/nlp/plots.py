"""Plots of an EarlyBERT run: mask distance vs step, coefficients per layer, accuracy vs time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUNS = (("full", "full fine-tuning"), ("full_same_time", "full, EarlyBERT's time"),
        ("earlybert", "EarlyBERT (search + slim)"), ("random_ticket", "random ticket"))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mask_distance(path: Path, result: Mapping[str, Any]) -> Path:
    """Consecutive-mask Hamming distance (heads, FFN) and the FIFO maximum vs search step."""
    plt = _plt()
    search = result["search"]
    recs = [r for r in search["records"] if "fifo_heads" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("dist_heads", "heads: vs previous mask", "-o"),
                              ("dist_ffn", "FFN: vs previous mask", "-s"),
                              ("fifo_heads", "heads: FIFO max", ":"),
                              ("fifo_ffn", "FFN: FIFO max", "--")):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label, ms=3)
    ax.axhline(result["config"]["threshold"], color="r", lw=0.8, label="threshold")
    if search["drawn_step"] is not None:
        ax.axvline(search["drawn_step"], color="g", ls=":",
                   label=f"drawn at step {search['drawn_step']}")
    ax.set_xlabel("search step")
    ax.set_ylabel("normalised Hamming distance")
    ax.set_title("EarlyBERT mask distance during the search")
    return _save(fig, ax, path)


def plot_coefficients(path: Path, result: Mapping[str, Any]) -> Path:
    """Head coefficients at the draw (layer x head, pruned heads marked), sorted FFN
    coefficient magnitudes per layer, and the mean |c| per layer along the search."""
    import numpy as np

    plt = _plt()
    search = result["search"]
    heads = np.array(search["ticket_head_coef"])
    masks = np.array(result["structure"]["head_masks"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    im = axes[0].imshow(heads, aspect="auto", cmap="viridis")
    for layer, head in zip(*np.nonzero(masks == 0), strict=True):
        axes[0].text(head, layer, "x", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=axes[0])
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_title("head coefficients of the ticket (x: removed)")
    for i, values in enumerate(search["ticket_ffn_coef_sorted"]):
        axes[1].plot(values, label=f"layer {i}")
    axes[1].set_xlabel("FFN neuron (sorted)")
    axes[1].set_ylabel("|c|")
    axes[1].set_title("FFN coefficients per layer (ticket)")
    axes[1].legend(fontsize=7)
    steps = [r["step"] for r in search["records"]]
    for key, style in (("head_coef_mean", "-"), ("ffn_coef_mean", "--")):
        series = np.array([r[key] for r in search["records"]])
        for i in range(series.shape[1] if series.ndim == 2 else 0):
            axes[2].plot(steps, series[:, i], style, color=f"C{i}",
                         label=f"layer {i} {'heads' if key.startswith('head') else 'FFN'}")
    axes[2].set_xlabel("search step")
    axes[2].set_ylabel("mean |c|")
    axes[2].set_title("mean coefficient per layer")
    axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_time(path: Path, result: Mapping[str, Any]) -> Path:
    """Validation accuracy after each epoch vs cumulative training seconds, and the final test
    accuracy of every run (EarlyBERT's time includes its search)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    offset_eb = result["wall_time"]["search_counted"]
    for i, (key, label) in enumerate(RUNS):
        run = result.get(key)
        if not run:
            continue
        offset = offset_eb if key == "earlybert" else 0.0
        t, pts = offset, []
        for h in run["history"]:
            t += h["time"]
            if h.get("val_acc") is not None:
                pts.append((t, 100 * h["val_acc"]))
        if pts:
            ax.plot(*zip(*pts, strict=True), "-", color=f"C{i}", alpha=0.5)
        if run.get("test_acc") is not None:
            ax.plot(offset + run["seconds"], 100 * run["test_acc"], "o", color=f"C{i}",
                    label=f"{label}: {100 * run['test_acc']:.1f}%")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("accuracy % (line: val per epoch, dot: test)")
    ax.set_title("accuracy vs training time")
    return _save(fig, ax, path)


def plot_search_settings(path: Path, runs: list[Mapping[str, Any]], threshold: float) -> Path:
    """FIFO maximum mask distance (heads solid, FFN dashed) vs search step, one colour per
    search setting (``runs``: ``setting``, ``drawn_step``, ``fifo_max`` [(step, heads, ffn)])."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, run in enumerate(runs):
        steps, heads, ffn = zip(*run["fifo_max"], strict=True)
        drawn = f", drawn at {run['drawn_step']}" if run["drawn_step"] else ", not drawn"
        ax.plot(steps, heads, "-o", color=f"C{i}", ms=3, label=f"{run['setting']}{drawn}")
        ax.plot(steps, ffn, "--s", color=f"C{i}", ms=3)
    ax.axhline(threshold, color="r", lw=0.8, label="threshold")
    ax.set_xlabel("search step")
    ax.set_ylabel("FIFO max distance (heads -, FFN --)")
    ax.set_title("When is the EarlyBERT ticket drawn?")
    return _save(fig, ax, path)


def plot_all(folder: str | Path, result: Mapping[str, Any]) -> list[str]:
    folder = Path(folder)
    names = ["mask_distance.png", "coefficients.png", "accuracy_time.png"]
    plot_mask_distance(folder / names[0], result)
    plot_coefficients(folder / names[1], result)
    plot_accuracy_time(folder / names[2], result)
    return names


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Grid, legend, tight layout; write the PNG and free the figure."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
