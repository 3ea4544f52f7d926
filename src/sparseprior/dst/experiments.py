"""DST experiments: the accuracy grid (benchmark), its table/claims/plots, and the ``reproduce``
section.

Grid: a model (LeNet-300-100, LeNet-5) x sparsity (80/90/95/98%) x method (static, SET, RigL,
GraNet), plus the dense model; each cell is one :func:`~sparseprior.dst.run_dst` run folder
``<out>/<model>-<method>-<sparsity>`` (dense: ``<model>-dense``), so a rerun skips finished
cells.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.results import Section
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.dst.config import DSTConfig, DSTRunConfig, default_dst_train
from sparseprior.dst.inference import compare_latency, to_sparse_inference
from sparseprior.dst.methods import DynamicSparsity, initial_masks
from sparseprior.dst.policies import DST_POLICIES
from sparseprior.dst.train import build_seeded_model, load_run_model, load_splits, run_dst
from sparseprior.engine import Callback, Trainer

log = logging.getLogger(__name__)

MODES = ("quick", "full")
GRID_MODELS = ("lenet300", "lenet5")
GRID_METHODS = ("static", "set", "rigl", "granet")
GRID_SPARSITIES = (0.8, 0.9, 0.95, 0.98)
MODEL_TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
METHOD_TITLES = {"dense": "dense", "static": "static", "set": "SET", "rigl": "RigL",
                 "granet": "GraNet"}


Cell = tuple[str, str, float, int]  # (model, method, sparsity, seed)


def run_name(model: str, method: str, sparsity: float, seed: int = 0) -> str:
    """Folder of one grid cell: ``lenet300-rigl-0.9`` (dense: ``lenet300-dense``), with
    ``-s<seed>`` appended for seeds other than 0."""
    sparse = DST_POLICIES.get(method).sparse
    name = f"{model}-{method}-{sparsity:g}" if sparse else f"{model}-{method}"
    return f"{name}-s{seed}" if seed else name


def grid_config(model: str, method: str, sparsity: float, *, epochs: int,
                data_root: str | None = None, subset: int | None = None, seed: int = 0,
                delta_t: int = 100, sparse_init: str = "unscaled", **train: Any
                ) -> DSTRunConfig:
    """One grid cell: SGD 0.05 (momentum 0.9, cosine, weight decay 1e-4, batch 128) for
    ``epochs``; masks updated every ``delta_t`` steps until 75% of training with alpha 0.3, ERK
    densities (output layer dense); GraNet from density 0.5, pruning in the first half;
    ``sparse_init`` initialises the kept weights (:attr:`DSTConfig.sparse_init`). ``seed``
    seeds the initialisation, the mask, SET's growth and the data order."""
    sparse = DST_POLICIES.get(method).sparse
    dst = DSTConfig(method=method, sparsity=sparsity if sparse else 0.0, delta_t=delta_t,
                    sparse_init=sparse_init, mask_seed=seed)
    schedule = default_dst_train().replace(epochs=epochs, seed=seed, progress=False, **train)
    return DSTRunConfig(dst=dst, model=model, data_root=data_root, subset=subset,
                        init_seed=seed, train=schedule)


def grid_cells(models: Sequence[str], methods: Sequence[str], sparsities: Sequence[float],
               *, extra_seeds: Sequence[int] = (), seed_sparsities: Sequence[float] = (0.9, 0.98)
               ) -> list[Cell]:
    """``(model, method, sparsity, seed)`` in priority order: seed 0 first (dense, then 98%,
    90% -- the cells of the claims --, then the other sparsities; slower models first), then
    each extra seed for dense and the ``seed_sparsities`` cells."""
    order = sorted(sparsities, key=lambda s: (s not in (0.9, 0.98), -s))
    slow_first = sorted(models, key=lambda m: m != "lenet5")
    cells: list[Cell] = [(m, "dense", 0.0, 0) for m in slow_first]
    cells += [(m, method, s, 0) for s in order for m in slow_first for method in methods]
    for seed in extra_seeds:
        cells += [(m, "dense", 0.0, seed) for m in slow_first]
        cells += [(m, method, s, seed) for s in order if s in seed_sparsities
                  for m in slow_first for method in methods]
    return cells


# --------------------------------------------------------------------------- tables and claims


def _grouped(summaries: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, float], Any]:
    """(model, method, sparsity) -> ``{"acc": mean test accuracy, "std", "n", "density",
    "sparsity"}`` over the seeds present."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for s in summaries:
        key = (s["model"], s["method"], round(float(s["target_sparsity"]), 4))
        groups.setdefault(key, []).append(s)
    out = {}
    for key, items in groups.items():
        accs = [float(i["test_accuracy"]) for i in items]
        out[key] = {"acc": statistics.mean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n": len(accs),
                    "density": statistics.mean(float(i["density"]) for i in items),
                    "sparsity": statistics.mean(float(i["sparsity"]) for i in items)}
    return out


def grid_table(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, sparsity): mean test accuracy (%) of each method over its seeds,
    dense for reference; ``counted sparsity %`` is counted from the final weights (mean over
    the runs); ``seeds`` is the number of seeds per cell (min-max)."""
    cells = _grouped(summaries)
    rows = []
    models = [m for m in GRID_MODELS if any(k[0] == m for k in cells)] + sorted(
        {k[0] for k in cells} - set(GRID_MODELS))
    for model in models:
        dense = cells.get((model, "dense", 0.0))
        sparsities = sorted({k[2] for k in cells if k[0] == model and k[1] != "dense"})
        for s in sparsities:
            row: dict[str, Any] = {"model": MODEL_TITLES.get(model, model),
                                   "target sparsity %": round(100 * s, 1)}
            mine = [c for (m, meth, sp), c in cells.items() if m == model and sp == s
                    and meth != "dense"]
            row["counted sparsity %"] = round(100 * statistics.mean(c["sparsity"]
                                                                    for c in mine), 2)
            row["dense %"] = round(100 * dense["acc"], 2) if dense else ""
            for method in GRID_METHODS:
                c = cells.get((model, method, s))
                row[f"{METHOD_TITLES[method]} %"] = round(100 * c["acc"], 2) if c else ""
            counts = [c["n"] for c in mine] + ([dense["n"]] if dense else [])
            row["seeds"] = f"{min(counts)}" if min(counts) == max(counts) else \
                f"{min(counts)}-{max(counts)}"
            rows.append(row)
    return rows


def grid_claims(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The issue's targets, each PASS/MISS from the measured runs (means over the seeds
    present, with their standard deviation), or MISSING."""
    cells = _grouped(summaries)
    lines = []

    def fmt(c: Mapping[str, Any]) -> str:
        return f"{100 * c['acc']:.2f}" + (f" +- {100 * c['std']:.2f} (n={c['n']})"
                                          if c["n"] > 1 else "")

    for model in sorted({k[0] for k in cells}):
        name = MODEL_TITLES.get(model, model)
        dense, rigl90 = cells.get((model, "dense", 0.0)), cells.get((model, "rigl", 0.9))
        if dense and rigl90:
            gap = 100 * (dense["acc"] - rigl90["acc"])
            lines.append(f"[{'PASS' if gap <= 1.0 else 'MISS'}] {name}: RigL at 90% "
                         f"({fmt(rigl90)}) is {gap:+.2f} points below dense ({fmt(dense)}) "
                         f"(target: within 1 point)")
        else:
            lines.append(f"[MISSING] {name}: dense or RigL-90% run not finished")
        acc = {m: cells.get((model, m, 0.98)) for m in GRID_METHODS}
        if all(acc.values()):
            a = {m: c["acc"] for m, c in acc.items()}
            ok = min(a["rigl"], a["granet"]) > a["set"] > a["static"]
            lines.append(f"[{'PASS' if ok else 'MISS'}] {name} at 98%: RigL {fmt(acc['rigl'])}, "
                         f"GraNet {fmt(acc['granet'])} > SET {fmt(acc['set'])} > static "
                         f"{fmt(acc['static'])} (target order)")
        else:
            lines.append(f"[MISSING] {name} at 98%: some runs not finished")
    return lines


def plot_grid(path: str | Path, summaries: Sequence[Mapping[str, Any]], model: str,
              title: str = "") -> Path:
    """Mean test accuracy vs density (log x) per method for ``model``, dense as a dashed
    line."""
    from sparseprior.tickets.experiments import plot_accuracy_vs_density

    cells = _grouped(summaries)
    series = {METHOD_TITLES[m]: [(c["density"], c["acc"])
                                 for (mod, meth, _), c in cells.items()
                                 if mod == model and meth == m] for m in GRID_METHODS}
    series = {k: v for k, v in series.items() if v}
    dense = cells.get((model, "dense", 0.0))
    return plot_accuracy_vs_density(path, series,
                                    dense_accuracy=dense["acc"] if dense else None,
                                    title=title or f"DST, {MODEL_TITLES.get(model, model)}")


# --------------------------------------------------------------------------- step time


class StepClock(Callback):
    """Wall time of every optimizer step after the first: data, forward, backward, optimizer,
    masks and the callbacks listed before this one (``times[step]`` in seconds). With
    ``sync`` it waits for CUDA at each step."""

    def __init__(self, sync: bool = False) -> None:
        self.sync = sync
        self.last = 0.0
        self.times: dict[int, float] = {}

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer: Trainer) -> None:
        self.last = self._now()

    def after_step(self, trainer: Trainer) -> None:
        now = self._now()
        if trainer.step > 1:
            self.times[trainer.step] = now - self.last
        self.last = now


def step_time_ratio(splits: Any, *, model: str = "lenet300", sparsity: float = 0.9,
                    steps: int = 60, rounds: int = 3, device: torch.device | str = "cpu"
                    ) -> dict[str, float]:
    """Median training-step time of a masked (static) model over the dense one, measured in
    ``rounds`` interleaved rounds of ``steps`` steps each, in the real training loop."""
    base = DSTRunConfig(model=model)
    variants = {"dense": DSTConfig(method="dense"),
                "masked": DSTConfig(method="static", sparsity=sparsity)}
    nets = {}
    for name, cfg in variants.items():
        net = build_seeded_model(base, splits.input_shape, splits.num_classes)
        nets[name] = (net, initial_masks(net, cfg))
    train = default_dst_train().replace(epochs=1, max_steps=steps, log_every=0,
                                        checkpoint_every=0, progress=False, device=str(device))
    times: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(rounds):
        for name, cfg in variants.items():
            net, masks = nets[name]
            clock = StepClock(sync=torch.device(device).type == "cuda")
            Trainer(net, splits.train, train.replace(seed=r), masks=masks,
                    callbacks=[DynamicSparsity(cfg), clock]).fit()
            times[name] += list(clock.times.values())
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"dense_ms": 1e3 * med["dense"], "masked_ms": 1e3 * med["masked"],
            "ratio": med["masked"] / med["dense"]}


# --------------------------------------------------------------------------- section


def section_settings(mode: str) -> dict[str, Any]:
    """Quick: LeNet-300-100, 20k Fashion-MNIST images, 5 epochs, all methods at 95%
    (< 60 s on 2 CPU cores). Full: all 60k images, 10 epochs, 90% and 98%."""
    check_choice(mode, "mode", MODES)
    if mode == "quick":
        return {"model": "lenet300", "subset": 20_000, "epochs": 5, "sparsities": [0.95],
                "delta_t": 50, "methods": list(GRID_METHODS)}
    return {"model": "lenet300", "subset": None, "epochs": 10, "sparsities": [0.9, 0.98],
            "delta_t": 100, "methods": list(GRID_METHODS)}


def dst_section(run: RunDir, mode: str, device: torch.device) -> Section:
    """``reproduce`` section: dense vs static/SET/RigL/GraNet on LeNet-300-100, the masked vs
    dense step-time ratio, and the CSR export of the RigL model (exactness + latency)."""
    settings = section_settings(mode)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        config = grid_config(settings["model"], "dense", 0.0, epochs=settings["epochs"],
                             subset=settings["subset"], delta_t=settings["delta_t"])
        splits = load_splits(config)
        summaries = [run_dst(config, run.path / run_name(settings["model"], "dense", 0.0),
                             device=device, splits=splits)]
        for s in settings["sparsities"]:
            for method in settings["methods"]:
                cfg = grid_config(settings["model"], method, s, epochs=settings["epochs"],
                                  subset=settings["subset"], delta_t=settings["delta_t"])
                summaries.append(run_dst(cfg, run.path / run_name(settings["model"], method, s),
                                         device=device, splits=splits))
        plot_grid(run.file("accuracy_vs_density.png"), summaries, settings["model"],
                  title=f"DST, LeNet-300-100, Fashion-MNIST ({mode})")
        ratio = step_time_ratio(splits, device=device)
        export = _export_check(run.path / run_name(settings["model"], "rigl",
                                                   settings["sparsities"][-1]), splits)
    finally:
        torch.set_num_threads(threads)
    section = Section("Dynamic sparse training (static, SET, RigL, GraNet)")
    section.rows = [{"method": METHOD_TITLES.get(s["method"], s["method"]),
                     "target sparsity": s["target_sparsity"],
                     "counted sparsity": round(s["sparsity"], 4),
                     "test_acc": round(s["test_accuracy"], 4), "updates": s["updates"],
                     "seconds": round(s["seconds"], 1)} for s in summaries]
    section.plots = ["accuracy_vs_density.png"]
    subset = settings["subset"] or "all 60k"
    section.notes = [
        f"LeNet-300-100 on Fashion-MNIST ({subset} training images), {settings['epochs']} "
        f"epochs of SGD 0.05 with cosine decay, ERK densities (output layer dense), mask "
        f"updates every {settings['delta_t']} steps until 75% of training (alpha 0.3); "
        f"GraNet prunes from density 0.5 during the first half. Sparsity is counted from the "
        f"final weights.",
        f"Training step time, masked (static {0.9:.0%}) / dense, median of interleaved "
        f"rounds in the real loop on {device}: {ratio['ratio']:.3f} ({ratio['masked_ms']:.2f} "
        f"vs {ratio['dense_ms']:.2f} ms). Masks are simulated: no training speed-up.",
        f"CSR export of the RigL model: max output difference {export['max_abs_diff']:.1e}; "
        f"inference speed-up over dense (1 thread): batch 1 {export['speedup_1']:.2f}x, "
        f"batch 256 {export['speedup_256']:.2f}x.",
    ]
    section.data = {"settings": settings, "summaries": summaries, "step_time": ratio,
                    "export": export}
    return section


def _export_check(folder: Path, splits: Any) -> dict[str, float]:
    _, model, _ = load_run_model(folder)
    sparse = to_sparse_inference(model)
    x = splits.test.tensors[0][:500]
    with torch.no_grad():
        diff = float((model(x) - sparse(x)).abs().max())
    rows = compare_latency({"dense": model, "csr": sparse}, tuple(splits.input_shape),
                           repeats=7, min_seconds=0.01)
    speed = {r["batch"]: r["speedup"] for r in rows if r["model"] == "csr"}
    return {"max_abs_diff": diff, "speedup_1": speed[1], "speedup_256": speed[256]}
