"""``sparseprior tickets ...``: lottery tickets (IMP with rewinding, Elastic LTH, Early-Bird).

Thin: parses options, builds the library's configs and calls it. Library ``ValueError`` s become
one line and exit code 2 in :func:`sparseprior.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sparseprior.common.device import resolve_device

app = typer.Typer(help="Lottery tickets: IMP with rewinding, Elastic LTH, Early-Bird.",
                  no_args_is_help=True)

# ----- options shared by `imp` and `elastic` (the source IMP experiment)
MODEL = typer.Option("lenet300", help="Model: lenet300, mlp, lenet5, resnet20, resnet32, ...")
HIDDEN = typer.Option(None, help="MLP hidden widths, comma-separated (model 'mlp'), "
                      "e.g. 256,256.")
DATASET = typer.Option("fashion-mnist", help="fashion-mnist, mnist, digits, cifar10, synthetic.")
DATA_ROOT = typer.Option(None, help="Dataset folder (default: the dataset's own).")
SUBSET = typer.Option(None, help="Use only this many training images.")
VAL_SIZE = typer.Option(0, help="Training images held out for validation.")
LEVELS = typer.Option(3, help="Pruning levels after the dense level 0.")
RATE = typer.Option(0.2, help="Fraction of the remaining weights pruned per level.")
SCOPE = typer.Option("global", help="'global' or 'layerwise' magnitude ranking.")
REWIND = typer.Option(0, "--rewind-step", help="Rewind survivors to the weights after this "
                      "many optimizer steps (0: to the initialisation).")
INCLUDE_OUTPUT = typer.Option(False, help="Also prune the output layer.")
EPOCHS = typer.Option(5, help="Training epochs per level.")
BATCH = typer.Option(128, help="Batch size.")
OPTIMIZER = typer.Option("adam", help="sgd, adam or adamw.")
LR = typer.Option(1.2e-3, help="Learning rate.")
MOMENTUM = typer.Option(0.9, help="SGD momentum.")
WD = typer.Option(0.0, help="Weight decay.")
SCHEDULE = typer.Option("cosine", help="Learning-rate schedule: cosine or constant.")
SEED = typer.Option(0, help="Seed of the initialisation, data split and data order.")
DEVICE = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'.")
THREADS = typer.Option(None, help="torch.set_num_threads for training.")


def parse_ints(text: str | None, name: str) -> list[int] | None:
    """``"256,256"`` -> ``[256, 256]`` (``None`` stays ``None``); ``ValueError`` if malformed."""
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--{name} must be comma-separated integers like 256,256, "
                         f"got {text!r}") from err


def _imp_config(*, model: str, hidden: str | None, dataset: str, data_root: Path | None,
                subset: int | None, val_size: int, levels: int, rate: float, scope: str,
                rewind_step: int, include_output: bool, epochs: int, batch_size: int,
                optimizer: str, lr: float, momentum: float, weight_decay: float,
                lr_schedule: str, seed: int, threads: int | None,
                ablations: list[str] | None = None, ablation_levels: list[int] | None = None
                ) -> Any:
    from sparseprior.engine import TrainConfig
    from sparseprior.tickets.imp import IMPConfig

    widths = parse_ints(hidden, "hidden")
    train = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                        momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
                        seed=seed, num_threads=threads, eval_every=0)
    return IMPConfig(model=model, model_options={"hidden": widths} if widths else {},
                     dataset=dataset, data_root=str(data_root) if data_root else None,
                     subset=subset, val_size=val_size, levels=levels, rate=rate, scope=scope,
                     rewind_step=rewind_step, include_output=include_output, seed=seed,
                     ablations=list(ablations or []), ablation_levels=ablation_levels,
                     train=train)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from sparseprior.common.results import format_table

    typer.echo(format_table(rows))


@app.command()
def imp(
    out: Path = typer.Option(Path("runs/imp"), help="Run folder (a rerun skips finished levels)."),
    model: str = MODEL, hidden: str = HIDDEN, dataset: str = DATASET,
    data_root: Path = DATA_ROOT, subset: int = SUBSET, val_size: int = VAL_SIZE,
    levels: int = LEVELS, rate: float = RATE, scope: str = SCOPE, rewind_step: int = REWIND,
    include_output: bool = INCLUDE_OUTPUT,
    ablation: list[str] = typer.Option(None, help="Control to run at each level: 'reinit' "
                                       "(IMP mask, new init) or 'random' (random mask, same "
                                       "per-layer density). Repeatable."),
    ablation_levels: str = typer.Option(None, help="Levels that get the controls, "
                                        "comma-separated (default: all)."),
    epochs: int = EPOCHS, batch_size: int = BATCH, optimizer: str = OPTIMIZER, lr: float = LR,
    momentum: float = MOMENTUM, weight_decay: float = WD, lr_schedule: str = SCHEDULE,
    seed: int = SEED, device: str = DEVICE, threads: int = THREADS,
) -> None:
    """Iterative magnitude pruning with rewinding: one folder per level, table of accuracy."""
    from sparseprior.tickets.imp import run_imp

    config = _imp_config(model=model, hidden=hidden, dataset=dataset, data_root=data_root,
                         subset=subset, val_size=val_size, levels=levels, rate=rate,
                         scope=scope, rewind_step=rewind_step, include_output=include_output,
                         epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
                         seed=seed, threads=threads, ablations=ablation,
                         ablation_levels=parse_ints(ablation_levels, "ablation-levels"))
    result = run_imp(config, out, device=resolve_device(device))
    _print_rows(result.rows())
    typer.echo(f"run folder: {out}")


@app.command()
def elastic(
    out: Path = typer.Option(Path("runs/elastic"), help="Run folder (resumable)."),
    source_run: Path = typer.Option(None, help="An IMP run folder holding the source ticket "
                                    "(default: find it first, in <out>/source, with the source "
                                    "options below)."),
    level: int = typer.Option(None, help="IMP level of the ticket (default: the last)."),
    target_depth: int = typer.Option(..., help="Target ResNet depth (6n+2), or number of "
                                     "hidden layers of an MLP."),
    mapping: str = typer.Option(None, help="Block mapping 'src:tgt,tgt;...', e.g. "
                                "'0:0;1:1,2;2:3,4' (default: replicate to grow, every other "
                                "block to shrink)."),
    compare: bool = typer.Option(True, help="Also run IMP directly on the target depth."),
    model: str = typer.Option("mlp", help="Source model (mlp or resnet20/32/56)."),
    hidden: str = typer.Option("256,256", help="Source MLP hidden widths (equal)."),
    dataset: str = DATASET, data_root: Path = DATA_ROOT, subset: int = SUBSET,
    val_size: int = VAL_SIZE, levels: int = LEVELS, rate: float = RATE, scope: str = SCOPE,
    rewind_step: int = REWIND, include_output: bool = INCLUDE_OUTPUT,
    epochs: int = EPOCHS, batch_size: int = BATCH, optimizer: str = OPTIMIZER, lr: float = LR,
    momentum: float = MOMENTUM, weight_decay: float = WD, lr_schedule: str = SCHEDULE,
    seed: int = SEED, device: str = DEVICE, threads: int = THREADS,
) -> None:
    """Elastic LTH: transform a ticket to another depth, retrain, compare with IMP there."""
    from sparseprior.tickets.elastic import ElasticConfig, run_elastic

    source = _imp_config(model=model, hidden=hidden if model == "mlp" else None,
                         dataset=dataset, data_root=data_root, subset=subset,
                         val_size=val_size, levels=levels, rate=rate, scope=scope,
                         rewind_step=rewind_step, include_output=include_output,
                         epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
                         seed=seed, threads=threads)
    config = ElasticConfig(source=source, source_run=str(source_run) if source_run else None,
                           level=level, target_depth=target_depth, mapping=mapping,
                           compare=compare)
    result = run_elastic(config, out, device=resolve_device(device))
    typer.echo(f"mapping: {result.mapping}")
    _print_rows(result.rows())
    typer.echo(f"run folder: {out}")


@app.command()
def earlybird(
    out: Path = typer.Option(Path("runs/earlybird"), help="Run folder."),
    model: str = typer.Option("vgg-small", help="A model with BatchNorm: vgg-small, resnet20."),
    width: float = typer.Option(0.5, help="Channel width multiplier."),
    dataset: str = DATASET, data_root: Path = DATA_ROOT,
    subset: int = typer.Option(15000, help="Training images (omit with 0 for all)."),
    prune_ratio: float = typer.Option(0.5, help="Fraction of BN channels pruned, in (0, 1)."),
    scope: str = typer.Option("global", help="'global' or 'layerwise' channel ranking."),
    l1: float = typer.Option(1e-4, help="L1 weight on BN scales during the search."),
    threshold: float = typer.Option(0.1, help="Draw the ticket when the max normalised "
                                    "Hamming distance in the FIFO is below this."),
    fifo: int = typer.Option(5, help="Masks kept in the FIFO (>= 2)."),
    search_epochs: int = typer.Option(20, help="Most epochs of the search phase."),
    epochs: int = typer.Option(16, help="Total epoch budget (the full baseline's epochs)."),
    lr: float = typer.Option(0.02, help="SGD learning rate of every phase."),
    retrain_init: str = typer.Option("inherit", help="'inherit' ticket weights or 'reinit'."),
    baseline: bool = typer.Option(True, help="Also train the full network for comparison."),
    seed: int = SEED, device: str = DEVICE, threads: int = THREADS,
) -> None:
    """Early-Bird tickets: find the channel mask early, slim the network, retrain it."""
    from sparseprior.common.results import format_table
    from sparseprior.tickets.earlybird import EarlyBirdConfig, result_rows, run_earlybird

    config = EarlyBirdConfig(
        model=model, width=width, dataset=dataset,
        data_root=str(data_root) if data_root else None, subset=subset or None,
        prune_ratio=prune_ratio, prune_scope=scope, l1_lambda=l1, distance_threshold=threshold,
        fifo_size=fifo, search_epochs_max=search_epochs, epochs=epochs, lr=lr,
        retrain_init=retrain_init, run_baseline=baseline, num_threads=threads, seed=seed)
    result = run_earlybird(config, out, device=resolve_device(device))
    typer.echo(format_table(result_rows(result)))
    typer.echo(f"ticket drawn at epoch {result['drawn_epoch']}; run folder: {out}")

from sparseprior.cli.earlybert import earlybert  # noqa: E402  (transformers loads lazily)

app.command("earlybert")(earlybert)
