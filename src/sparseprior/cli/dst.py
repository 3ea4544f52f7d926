"""``sparseprior dst ...``: dynamic sparse training (SET, RigL, GraNet, static baseline).

Thin: parses options, builds the library's configs and calls it. ``dst train`` is torchrun-ready:
``torchrun --nproc_per_node 2 -m sparseprior dst train ...`` runs DDP (gloo on CPU, nccl on GPU;
``--batch-size`` is the global batch), and only rank 0 writes and prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.common.device import resolve_device

app = typer.Typer(help="Dynamic sparse training: SET, RigL, GraNet, static sparse baseline.",
                  no_args_is_help=True)


def _print_summary(summary: dict) -> None:
    from sparseprior.common.results import format_table

    rows = [{"layer": n, "shape": "x".join(str(s) for s in v["shape"]),
             "nonzero": v["nonzero"], "sparsity": round(v["sparsity"], 4)}
            for n, v in summary["layers"].items()]
    typer.echo(format_table(rows))
    typer.echo(f"{summary['method']} on {summary['model']}: test accuracy "
               f"{summary['test_accuracy']:.4f}, sparsity {summary['sparsity']:.4f} counted from "
               f"the weights ({summary['nonzero']}/{summary['total']} non-zero), "
               f"{summary['updates']} mask updates, {summary['steps']} steps in "
               f"{summary['seconds']:.1f} s")


@app.command()
def train(
    method: str = typer.Option("rigl", help="dense, static, set, rigl or granet."),
    sparsity: float = typer.Option(0.9, help="Final fraction of zero weights, in [0, 1)."),
    distribution: str = typer.Option("erk", help="Per-layer densities: erk, uniform or er."),
    delta_t: int = typer.Option(100, help="Optimizer steps between mask updates."),
    t_end: float = typer.Option(0.75, help="Fraction of training after which the mask is "
                                "frozen, in (0, 1]."),
    alpha: float = typer.Option(0.3, help="Initial drop fraction (cosine-decayed)."),
    initial_density: float = typer.Option(0.5, help="GraNet's starting density (1.0: "
                                          "dense-to-sparse)."),
    prune_start: float = typer.Option(0.0, help="GraNet pruning window start (fraction)."),
    prune_end: float = typer.Option(0.5, help="GraNet pruning window end (fraction)."),
    include_output: bool = typer.Option(False, help="Also sparsify the output layer."),
    model: str = typer.Option("lenet300", help="Model: lenet300, lenet5, mlp, resnet20, ..."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, digits, "
                                "cifar10, synthetic."),
    data_root: Path = typer.Option(None, help="Dataset folder (default: the dataset's own)."),
    subset: int = typer.Option(None, help="Use only this many training images."),
    epochs: int = typer.Option(10, help="Training epochs."),
    batch_size: int = typer.Option(128, help="Global batch size (split over DDP ranks)."),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw."),
    lr: float = typer.Option(0.05, help="Peak learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(1e-4, help="Weight decay."),
    lr_schedule: str = typer.Option("cosine", help="cosine, constant or step."),
    seed: int = typer.Option(0, help="Seed of the mask, SET's growth, init and data order."),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'."),
    threads: int = typer.Option(None, help="torch.set_num_threads for training."),
    out: Path = typer.Option(None, help="Run folder (default runs/dst/<model>-<method>-"
                             "<sparsity>); a rerun resumes or returns the finished result."),
) -> None:
    """Train one model with one method; writes a run folder and prints per-layer sparsity."""
    from sparseprior.dst import DSTConfig, DSTRunConfig, run_dst
    from sparseprior.engine import TrainConfig
    from sparseprior.engine.distributed import env_dist_info

    dst = DSTConfig(method=method, sparsity=sparsity, distribution=distribution,
                    delta_t=delta_t, t_end=t_end, alpha=alpha, initial_density=initial_density,
                    prune_start=prune_start, prune_end=prune_end,
                    include_output=include_output, seed=seed)
    schedule = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                           momentum=momentum, weight_decay=weight_decay,
                           lr_schedule=lr_schedule, seed=seed, num_threads=threads,
                           eval_every=0, log_every=100)
    config = DSTRunConfig(dst=dst, model=model, dataset=dataset,
                          data_root=str(data_root) if data_root else None, subset=subset,
                          init_seed=seed, train=schedule)
    folder = out or Path("runs/dst") / f"{model}-{method}-{sparsity:g}"
    summary = run_dst(config, folder, device=resolve_device(device))
    if env_dist_info().is_main:
        _print_summary(summary)
        typer.echo(f"run folder: {folder}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A finished `dst train` run folder."),
    out: Path = typer.Option(None, help="CSR file (default <run>/sparse_inference)."),
    min_sparsity: float = typer.Option(0.5, help="Convert linear layers at least this sparse."),
    repeats: int = typer.Option(15, help="Interleaved timing rounds (0: no timing)."),
    threads: int = typer.Option(1, help="Threads during the timing."),
) -> None:
    """Export a trained run to CSR linear layers; check outputs and time dense vs CSR."""
    from sparseprior.common.results import format_table
    from sparseprior.dst import export_run

    result = export_run(run, out, min_sparsity=min_sparsity, repeats=repeats, threads=threads)
    typer.echo(f"CSR layers: {result['csr_layers']}")
    typer.echo(f"max |dense - csr| output difference on {result['checked_images']} test images: "
               f"{result['max_abs_difference']:.2e}; accuracy dense "
               f"{result['dense_accuracy']:.4f}, csr {result['sparse_accuracy']:.4f}")
    if result["latency"]:
        typer.echo(format_table([{**r, "ms": round(r["ms"], 4), "speedup": round(r["speedup"], 2)}
                                 for r in result["latency"]]))
    typer.echo(f"saved {result['file']}")
