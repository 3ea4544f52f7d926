"""Lottery-ticket experiments: the settings behind the benchmarks, plots, and the ``reproduce``
section.

The section is a list of sub-experiments (:data:`SUB_EXPERIMENTS`), each a function
``(run, mode, device, data) -> Part`` run in its own sub-folder; their rows share the columns
``experiment, network, level, density, test_acc`` (plus any of their own). To add one (e.g.
Early-Bird), append it::

    SUB_EXPERIMENTS["earlybird"] = earlybird_part

Quick mode (a few minutes on 2 CPU cores): LeNet-300-100 on a 20k-image Fashion-MNIST subset,
5 IMP levels at 40%/level (density 7.8%), both controls at the last level; a tiny Elastic MLP
transform. Full mode: the benchmark settings (full Fashion-MNIST, 16 levels at 20%/level).
Without Fashion-MNIST the section falls back to scikit-learn digits and says so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.results import Section
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.engine import TrainConfig
from sparseprior.tickets.elastic import ElasticConfig, ElasticResult, run_elastic
from sparseprior.tickets.imp import IMPConfig, IMPResult, load_imp_result, load_splits, run_imp

log = logging.getLogger(__name__)

MODES = ("quick", "full")
FALLBACK_DATASET = "digits"


@dataclasses.dataclass
class DataChoice:
    """The dataset the section uses (``fashion-mnist``, or ``digits`` as a fallback)."""

    name: str
    note: str = ""


def choose_dataset(preferred: str = "fashion-mnist") -> DataChoice:
    """``preferred`` if its files load, else scikit-learn digits (with a note saying so)."""
    try:
        load_splits(IMPConfig(dataset=preferred, subset=1))
    except (ValueError, OSError) as err:
        note = (f"{preferred} is not available ({err}); fell back to scikit-learn digits "
                "(8x8), so numbers are not comparable with the Fashion-MNIST results in "
                "docs/tickets.md.")
        logging.getLogger(__name__).warning(note)  # the report shows warnings as flags
        return DataChoice(FALLBACK_DATASET, note)
    return DataChoice(preferred)


# --------------------------------------------------------------------------- settings


def imp_experiment_config(mode: str = "full", dataset: str = "fashion-mnist",
                          **changes: Any) -> IMPConfig:
    """IMP on LeNet-300-100 with both controls.

    ``full`` (the benchmark): all 60k training images, 16 levels at 20%/level (density 2.8%),
    global magnitude ranking (output layer dense), rewind to init (k = 0), Adam 1.2e-3 with
    cosine decay, batch 128, 6 epochs per level, controls at every level. ``quick``: a 20k
    subset, 5 levels at 40%/level (density 7.8%), 3 epochs, controls at the last level.
    ``changes`` override fields (``train`` fields may be given as ``train={...}``).
    """
    check_choice(mode, "mode", MODES)
    train = TrainConfig(epochs=6, batch_size=128, optimizer="adam", lr=1.2e-3,
                        lr_schedule="cosine", weight_decay=0.0, eval_every=0, log_every=100,
                        progress=False)
    config = IMPConfig(model="lenet300", dataset=dataset, levels=16, rate=0.2,
                       scope="global", rewind_step=0, ablations=["reinit", "random"],
                       train=train)
    if mode == "quick":
        config = config.replace(subset=20_000 if dataset == "fashion-mnist" else None,
                                levels=5, rate=0.4, ablation_levels=[5],
                                train=train.replace(epochs=3))
    if dataset == "digits":  # 8x8 images, 1437 training images: more, smaller steps
        config = config.replace(train=config.train.replace(batch_size=32))
    return _apply(config, changes)


def elastic_experiment_config(mode: str = "full", dataset: str = "fashion-mnist",
                              **changes: Any) -> ElasticConfig:
    """Elastic LTH on MLPs: a ticket of MLP [256, 256] transformed to 4 hidden layers
    (the hidden-to-hidden layer replicated 3 times) vs IMP directly on MLP [256]*4.

    ``full``: all 60k images, 5 levels at 36%/level (density 10.7%; 36% rather than 20%
    keeps the two IMP runs within the 10-minute CPU budget), 6 epochs per level, Adam 1.2e-3
    with cosine decay.
    ``quick``: MLP [128, 128] -> 3 hidden layers, 20k images, 3 levels at 50%/level, 3 epochs.
    """
    check_choice(mode, "mode", MODES)
    train = TrainConfig(epochs=6, batch_size=128, optimizer="adam", lr=1.2e-3,
                        lr_schedule="cosine", weight_decay=0.0, eval_every=0, log_every=100,
                        progress=False)
    source = IMPConfig(model="mlp", model_options={"hidden": [256, 256]}, dataset=dataset,
                       levels=5, rate=0.36, scope="global", rewind_step=0, train=train)
    config = ElasticConfig(source=source, target_depth=4)
    if mode == "quick":
        source = source.replace(model_options={"hidden": [128, 128]},
                                subset=20_000 if dataset == "fashion-mnist" else None,
                                levels=3, rate=0.5, train=train.replace(epochs=3))
        config = config.replace(source=source, target_depth=3)
    if dataset == "digits":
        config = config.replace(source=config.source.replace(
            train=config.source.train.replace(batch_size=32)))
    return _apply(config, changes)


def _apply(config: Any, changes: Mapping[str, Any]) -> Any:
    changes = dict(changes)
    train = changes.pop("train", None)
    target = config.source if isinstance(config, ElasticConfig) else config
    if train:
        changes["train"] = target.train.replace(**train)
    if isinstance(config, ElasticConfig):
        own = {k: changes.pop(k) for k in list(changes) if k in
               {f.name for f in dataclasses.fields(ElasticConfig)}}
        return config.replace(source=config.source.replace(**changes), **own)
    return config.replace(**changes)


# --------------------------------------------------------------------------- plots and rows


def plot_accuracy_vs_density(
    path: str | Path,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    dense_accuracy: float | None = None,
    title: str = "",
    markers: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Test accuracy (%) vs density (log x, decreasing to the right) for each series of
    ``(density, accuracy)`` points, a dashed line at the dense accuracy, and single
    ``markers`` (name -> point) drawn as stars. Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, points in series.items():
        pts = sorted(p for p in points if p[1] is not None)
        if pts:
            ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o", ms=4,
                    label=name)
    for name, (d, acc) in (markers or {}).items():
        ax.plot([d * 100], [acc * 100], marker="*", ms=14, ls="none", label=name)
    if dense_accuracy is not None:
        ax.axhline(dense_accuracy * 100, color="gray", ls="--", lw=1, label="dense")
        ax.axhspan(dense_accuracy * 100 - 0.5, dense_accuracy * 100 + 0.5, color="gray",
                   alpha=0.12, lw=0)
    ax.set_xscale("log")
    xs = [p[0] * 100 for pts in series.values() for p in pts]
    xs += [d * 100 for d, _ in (markers or {}).values()]
    if xs:
        ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1)
                 if min(xs) / 1.5 <= t <= max(xs) * 1.5]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("density (% of prunable weights kept, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def imp_series(result: IMPResult) -> dict[str, list[tuple[float, float]]]:
    """``{"IMP ticket (rewound)": [(density, acc), ...], "random reinit": ..., ...}``."""
    names = {"reinit": "random reinit (IMP mask)", "random": "random pruning (rewound)"}
    series = {"IMP ticket (rewound)": [(s["density"], s["test_accuracy"])
                                       for s in result.levels]}
    for key, items in result.controls.items():
        series[names[key]] = [(s["density"], s["test_accuracy"]) for s in items]
    return series


def imp_table(result: IMPResult) -> list[dict[str, Any]]:
    """Wide rows: level, density (%), IMP / reinit / random accuracy (%), IMP minus dense."""
    dense = result.dense_accuracy
    rows = []
    for r in result.rows():
        row: dict[str, Any] = {"level": r["level"], "density %": round(100 * r["density"], 2),
                               "IMP %": round(100 * r["imp_acc"], 2)}
        for key, label in (("reinit_acc", "reinit %"), ("random_acc", "random %")):
            if key in r:
                row[label] = round(100 * r[key], 2) if r[key] is not None else ""
        row["IMP - dense"] = round(100 * (r["imp_acc"] - dense), 2)
        rows.append(row)
    return rows


def elastic_plot(path: str | Path, result: ElasticResult, source_run: Path,
                 target_run: Path | None, extra: Sequence[dict[str, Any]] = ()) -> Path:
    """Both IMP curves (source and target depth) and the transformed ticket(s) as stars."""
    series = {f"IMP, depth {result.source['depth']}": [
        (s["density"], s["test_accuracy"]) for s in load_imp_result(source_run).levels]}
    if target_run is not None and (target_run / "config.json").exists():
        series[f"IMP, depth {result.transformed['depth']}"] = [
            (s["density"], s["test_accuracy"]) for s in load_imp_result(target_run).levels]
    markers = {f"elastic ticket L{s['level']} ({s['source_depth']}->{s['depth']})":
               (s["density"], s["test_accuracy"]) for s in [result.transformed, *extra]}
    return plot_accuracy_vs_density(path, series, markers=markers,
                                    title=f"Elastic LTH, mapping {result.mapping}")


# --------------------------------------------------------------------------- section


@dataclasses.dataclass
class Part:
    """What one sub-experiment adds to the section (plots are relative to its folder)."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


SubExperiment = Callable[[RunDir, str, torch.device, DataChoice], Part]


def imp_part(run: RunDir, mode: str, device: torch.device, data: DataChoice) -> Part:
    """IMP with rewinding on LeNet-300-100 and its two controls."""
    config = imp_experiment_config(mode, data.name)
    result = run_imp(config, run.path, device=device, splits=load_splits(config))
    plot_accuracy_vs_density(run.file("accuracy_vs_density.png"), imp_series(result),
                             dense_accuracy=result.dense_accuracy,
                             title=f"IMP with rewinding, LeNet-300-100 on {data.name}")
    rows = [{"experiment": "IMP", "network": "LeNet-300-100 dense" if s["level"] == 0 else
             "IMP ticket", "level": s["level"], "density": s["density"],
             "test_acc": s["test_accuracy"]} for s in result.levels]
    labels = {"reinit": "random reinit", "random": "random pruning"}
    for key, items in result.controls.items():
        rows += [{"experiment": "IMP", "network": labels[key], "level": s["level"],
                  "density": s["density"], "test_acc": s["test_accuracy"]} for s in items]
    last = result.levels[-1]
    notes = [f"IMP: {config.levels} levels at {config.rate:.0%} per level, {config.scope} "
             f"magnitude ranking (output layer dense), rewind step k={config.rewind_step}, "
             f"{config.train.epochs} epochs of {config.train.optimizer} lr "
             f"{config.train.lr:g} ({config.train.lr_schedule}) per level on "
             f"{config.subset or 'all'} training images. At density {last['density']:.1%} "
             f"the ticket reaches {last['test_accuracy']:.2%} vs {result.dense_accuracy:.2%} "
             f"dense."]
    return Part(rows, ["accuracy_vs_density.png"], notes,
                {"config": config.to_dict(), "rows": result.rows()})


def elastic_part(run: RunDir, mode: str, device: torch.device, data: DataChoice) -> Part:
    """A tiny Elastic LTH transform of an MLP ticket to more hidden layers."""
    config = elastic_experiment_config(mode, data.name)
    result = run_elastic(config, run.path, device=device,
                         splits=load_splits(config.source))
    elastic_plot(run.file("elastic.png"), result, run.path / "source", run.path / "target_imp")
    rows = [{"experiment": "Elastic LTH", "network": r["network"], "level": r["level"],
             "density": r["density"], "test_acc": r["test_acc"],
             "depth": r["depth"]} for r in result.rows()]
    hidden = config.source.model_options["hidden"]
    notes = [f"Elastic LTH: the level-{config.level or config.source.levels} ticket of MLP "
             f"{hidden} transformed to {config.target_depth} hidden layers with mapping "
             f"{result.mapping} (depth = hidden layers), retrained with the same schedule, vs "
             f"IMP run directly on the deeper MLP to the same density."]
    return Part(rows, ["elastic.png"], notes, {"summary": result.to_dict()})


#: Sub-experiments of the tickets section, in order (Early-Bird is appended here).
SUB_EXPERIMENTS: dict[str, SubExperiment] = {"imp": imp_part, "elastic": elastic_part}


def tickets_section(run: RunDir, mode: str, device: torch.device) -> Section:
    """``reproduce`` section: every sub-experiment of :data:`SUB_EXPERIMENTS`, each in
    ``run/<name>/``, merged into one table (and one plot each)."""
    check_choice(mode, "mode", MODES)
    data = choose_dataset()
    section = Section("Lottery tickets (IMP with rewinding, Elastic LTH)")
    if data.note:
        section.notes.append(data.note)
    threads = torch.get_num_threads()
    try:
        if device.type == "cpu":  # small layers: 1 thread is fastest, and robust on shared CPUs
            torch.set_num_threads(1)
        for name, part_fn in SUB_EXPERIMENTS.items():
            part = part_fn(RunDir(run.path / name), mode, device, data)
            section.rows += part.rows
            section.plots += [f"{name}/{p}" for p in part.plots]
            section.notes += part.notes
            section.data[name] = part.data
    finally:
        torch.set_num_threads(threads)
    return section
