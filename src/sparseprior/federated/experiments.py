"""Federated experiments: the benchmark grid, comparisons at equal upload, the claims of the
issue, and the quick ``reproduce`` section.

"At equal cumulative upload": for a budget ``B`` (MB, counted), a run's accuracy is the last
evaluated global test accuracy reached with ``cum_upload_mb <= B`` (no extrapolation; a run
that never evaluates within ``B`` has none). The budget is FedDST's total upload.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import TensorDataset

from sparseprior.common.results import Claim, Section
from sparseprior.common.runs import RunDir
from sparseprior.federated.config import FedRunConfig, default_local_train
from sparseprior.federated.plots import plot_runs
from sparseprior.federated.simulation import run_federated

log = logging.getLogger(__name__)

TITLES = {"feddst": "FedDST", "feddst-noadj": "FedDST (no readjust)", "fedavg": "FedAvg",
          "fedavgm": "FedAvgM", "static": "static ERK mask"}


def grid_config(strategy: str, split: str, seed: int, **overrides: Any) -> FedRunConfig:
    """The issue's setting: LeNet-5 on Fashion-MNIST, K=100, C=10, E=2, 200 rounds, ERK at
    sparsity 0.8 over all layers (output layer included, as in FedDST), FedDST readjusting
    every 10 rounds until 80% of the rounds with alpha 0.05 (one local epoch after the
    readjustment); ``overrides`` replace fields (``local``: a dict of TrainConfig fields)."""
    local = overrides.pop("local", {})
    base = FedRunConfig(strategy=strategy, split=split, seed=seed, include_output=True,
                        local=default_local_train().replace(seed=seed, **local))
    return base.replace(**overrides) if overrides else base


def reduced_test(splits: Any, n: int | None) -> Any:
    """``splits`` with only the first ``n`` test images (``None``: all)."""
    if n is None:
        return splits
    x, y = splits.test.tensors
    return dataclasses.replace(splits, test=TensorDataset(x[:n], y[:n]))


def accuracy_at_upload(history: Sequence[Mapping[str, Any]], budget_mb: float
                       ) -> float | None:
    """Last evaluated test accuracy with ``cum_upload_mb <= budget_mb`` (``None``: none)."""
    ok = [h["test_acc"] for h in history if "test_acc" in h and
          h["cum_upload_mb"] <= budget_mb * (1 + 1e-9)]
    return ok[-1] if ok else None


def compare(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per strategy: final accuracy, accuracy at FedDST's total upload, upload per client per
    round, and the upload ratio against FedAvg (needs ``feddst`` in ``histories``)."""
    budget = histories["feddst"][-1]["cum_upload_mb"] if "feddst" in histories else None
    out: dict[str, Any] = {"budget_mb": budget, "strategies": {}}
    for name, hist in histories.items():
        per_client = [h["upload_bytes_per_client"] for h in hist if h["replied"]]
        evals = [h for h in hist if "test_acc" in h]
        out["strategies"][name] = {
            "final_acc": evals[-1]["test_acc"] if evals else None,
            "acc_at_budget": accuracy_at_upload(hist, budget) if budget else None,
            "upload_per_client_round": statistics.mean(per_client) if per_client else None,
            "upload_mb": hist[-1]["cum_upload_mb"], "rounds": hist[-1]["round"]}
    if "fedavg" in histories and "feddst" in histories:
        s = out["strategies"]
        out["upload_ratio"] = s["feddst"]["upload_per_client_round"] / \
            s["fedavg"]["upload_per_client_round"]
    return out


def claims(comparisons: Sequence[Mapping[str, Any]], *, decides: bool, note: str = ""
           ) -> list[Claim]:
    """The issue's targets from one or more comparisons (seeds x splits): means of the
    per-comparison figures; ``decides=False`` reports them without a verdict."""

    def mean_of(key_fn) -> float | None:
        vals = [v for v in (key_fn(c) for c in comparisons) if v is not None]
        return statistics.mean(vals) if vals else None

    def gap(c, other, key):
        a, b = c["strategies"].get("feddst", {}), c["strategies"].get(other, {})
        if a.get(key) is None or b.get(key) is None:
            return None
        return 100 * (a[key] - b[key])

    ratio = mean_of(lambda c: c.get("upload_ratio"))
    vs_avg = mean_of(lambda c: min([g for g in (gap(c, "fedavg", "acc_at_budget"),
                                                gap(c, "fedavgm", "acc_at_budget"))
                                    if g is not None], default=None))
    vs_static = mean_of(lambda c: gap(c, "static", "acc_at_budget"))
    vs_dense = mean_of(lambda c: gap(c, "fedavg", "final_acc"))

    def verdict(value: float | None, ok) -> bool | None:
        return None if (value is None or not decides) else bool(ok(value))

    return [
        Claim("fed.upload_ratio", "FedDST upload per client per round / dense FedAvg's "
              "(counted bytes)", "<= 0.22", ratio, "x", verdict(ratio, lambda v: v <= 0.22),
              note=note),
        Claim("fed.acc_vs_fedavg_at_equal_upload", "FedDST accuracy minus the better of "
              "FedAvg/FedAvgM at FedDST's cumulative upload", ">= +5 points", vs_avg, "points",
              verdict(vs_avg, lambda v: v >= 5.0), note=note),
        Claim("fed.acc_vs_static_at_equal_upload", "FedDST accuracy minus the static ERK "
              "mask's at equal cumulative upload", ">= +1 point", vs_static, "points",
              verdict(vs_static, lambda v: v >= 1.0), note=note),
        Claim("fed.acc_vs_dense_at_equal_rounds", "FedDST final accuracy minus dense FedAvg's "
              "after the same rounds", ">= -2 points", vs_dense, "points",
              verdict(vs_dense, lambda v: v >= -2.0), note=note),
    ]


# --------------------------------------------------------------------------- the section


def section_settings(mode: str) -> dict[str, Any]:
    """Quick: 2000 training images over 10 clients (2 label shards each), 5 per round, 16
    rounds of 2 local epochs, 2000 test images; full: the benchmark's setting, 1 seed."""
    if mode == "quick":
        return {"subset": 2000, "test_images": 2000, "strategies": ["feddst", "fedavg",
                                                                     "static"],
                "overrides": {"clients": 10, "per_round": 5, "rounds": 16, "eval_every": 2,
                              "readjust_every": 4, "alpha": 0.2, "client_test": False},
                "split": "shards:2"}
    return {"subset": None, "test_images": None,
            "strategies": ["feddst", "fedavg", "fedavgm", "static"],
            "overrides": {}, "split": "shards:2"}


def fed_section(run: RunDir, mode: str, device: torch.device) -> Section:
    """``reproduce`` section: FedDST, FedAvg and the static ERK mask on Fashion-MNIST;
    accuracy against rounds and against cumulative upload (counted bytes)."""
    settings = section_settings(mode)
    splits = None
    histories, summaries = {}, {}
    for strategy in settings["strategies"]:
        config = grid_config(strategy, settings["split"], 0, subset=settings["subset"],
                             threads=1, **settings["overrides"])
        if splits is None:
            splits = reduced_test(config.load_splits(config.seed), settings["test_images"])
        folder = run.path / strategy
        summaries[strategy] = run_federated(config, folder, splits=splits)
        summaries[strategy].pop("state", None)
        histories[strategy] = RunDir(folder).read_metrics()
    plot_runs({TITLES[k]: v for k, v in histories.items()}, run.path,
              title=f"LeNet-5, Fashion-MNIST, {settings['split']} ({mode})")
    comparison = compare(histories)
    quick = mode == "quick"
    note = ("quick run (16 rounds, 2000 images): reported, not decided; "
            "benchmarks/fed_fashion_mnist.py decides") if quick else "1 seed, shards:2"
    section = Section("Federated dynamic sparse training (FedDST vs FedAvg, static mask)",
                      key="fed")
    section.rows = [{
        "strategy": TITLES[k], "test acc %": round(100 * s["test_acc"], 2),
        "acc % at FedDST's upload": (round(100 * c["acc_at_budget"], 2)
                                     if (c := comparison["strategies"][k])["acc_at_budget"]
                                     is not None else None),
        "sparsity (counted)": round(s["sparsity"], 4),
        "upload kB/client/round": round(s["upload_bytes_per_client_round"] / 1e3, 1),
        "upload MB": round(s["upload_mb"], 2)} for k, s in summaries.items()]
    section.plots = ["accuracy_vs_rounds.png", "accuracy_vs_upload.png"]
    cfg = settings["overrides"]
    section.notes = [
        f"LeNet-5 (ERK at sparsity 0.8 over all layers) on Fashion-MNIST "
        f"({settings['subset'] or 'all 60k'} training images, split {settings['split']}), "
        f"{cfg.get('clients', 100)} clients, {cfg.get('per_round', 10)} per round, "
        f"{cfg.get('rounds', 200)} rounds of 2 local SGD epochs; test accuracy on "
        f"{settings['test_images'] or 'all 10k'} test images. Upload counted from the "
        f"serialised messages (values + masks as bitmap or indices; fp32).",
        "Accuracy at FedDST's upload: each run's last evaluated accuracy whose cumulative "
        "upload does not exceed FedDST's total.",
    ]
    section.claims = claims([comparison], decides=not quick, note=note)
    section.data = {"settings": settings, "summaries": summaries, "comparison": comparison}
    return section
