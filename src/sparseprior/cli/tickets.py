"""``sparseprior tickets ...``: lottery tickets (IMP with rewinding, Elastic LTH, Early-Bird).

Thin: parses options, builds the library's configs and calls it. Library ``ValueError`` s become
one line and exit code 2 in :func:`sparseprior.cli.main`. The Early-Bird command is added to
this ``app`` by its own module.
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
    from sparseprior.report import format_table

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
