"""``sparseprior solvers ...``: problems, training, evaluation and benchmarks of sparse solvers."""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.common.device import resolve_device
from sparseprior.common.runs import RunDir

app = typer.Typer(help="Learned sparse solvers (LISTA family) and classic baselines.",
                  no_args_is_help=True)

# Shared problem options: a saved problem file, or the fields of a generated one.
PROBLEM = typer.Option(None, "--problem", help="A problem file (.npz/.safetensors) from "
                       "'solvers problem'; overrides the generation options.")
M = typer.Option(250, help="Measurements m (rows of A).")
N = typer.Option(500, help="Signal size n (columns of A).")
P = typer.Option(0.1, help="Bernoulli probability of a non-zero in x*.")
SNR = typer.Option(None, "--snr", help="Noise SNR in dB (omit for noiseless).")
KAPPA = typer.Option(None, help="Condition number of A (omit for Gaussian A).")
SEED = typer.Option(0, help="Seed of A and the fixed validation/test sets.")
DEVICE = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'.")


def _problem(problem: Path | None, m: int, n: int, p: float, snr: float | None,
             kappa: float | None, seed: int):
    from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem

    if problem is not None:
        return SparseRecoveryProblem.load(problem)
    return SparseRecoveryProblem.generate(
        ProblemConfig(m=m, n=n, p=p, snr_db=snr, kappa=kappa, seed=seed))


@app.command()
def problem(
    out: Path = typer.Argument(..., help="Output file: .npz or .safetensors."),
    m: int = M, n: int = N, p: float = P, snr: float = SNR, kappa: float = KAPPA,
    seed: int = SEED,
) -> None:
    """Generate a problem (A and the fixed validation/test sets) and save it."""
    from sparseprior.solvers.analytic import coherence_report

    prob = _problem(None, m, n, p, snr, kappa, seed)
    prob.save(out)
    rep = coherence_report(prob.A)
    typer.echo(f"{prob!r}\n  condition number {prob.condition_number:.3g}, "
               f"L = ||A||_2^2 = {prob.lipschitz:.4g}\n"
               f"  mutual coherence of A {rep.mutual_coherence:.4f}; ALISTA's analytic W: "
               f"generalised coherence {rep.generalized_coherence:.4f}, constraint error "
               f"{rep.constraint_error:.1e}\n  saved to {out}")


@app.command()
def train(
    model: str = typer.Option("LISTA-CPSS", help="LISTA, LISTA-CP, LISTA-SS, LISTA-CPSS, "
                              "TiLISTA, ALISTA, HyperLISTA."),
    layers: int = typer.Option(16, help="Number of unrolled layers T."),
    budget: str = typer.Option("quick", help="Training budget preset: quick, cpu or paper."),
    out: Path = typer.Option(None, help="Run folder (default runs/solvers/<model>)."),
    resume: bool = typer.Option(True, help="Continue from the run folder's last stage."),
    max_seconds: float = typer.Option(None, help="Hard wall-clock budget for the training "
                                      "(each stage gets a share)."),
    problem: Path = PROBLEM, m: int = M, n: int = N, p: float = P, snr: float = SNR,
    kappa: float = KAPPA, seed: int = SEED, device: str = DEVICE,
) -> None:
    """Train an unrolled solver with the layer-wise staged schedule; save its checkpoint."""
    from sparseprior.solvers.experiments import evaluate_solver
    from sparseprior.solvers.training import budget_for, train_staged
    from sparseprior.solvers.unrolled import build_solver

    if model == "HyperLISTA":
        raise ValueError("HyperLISTA has 3 hyperparameters and is tuned, not trained: use "
                         "'sparseprior solvers tune'")
    config = budget_for(model, budget)
    if max_seconds is not None:
        config = config.replace(max_seconds=max_seconds)
    prob = _problem(problem, m, n, p, snr, kappa, seed)
    dev = resolve_device(device)
    run = RunDir(out or Path("runs/solvers") / model)
    run.write_json("problem.json", prob.config.to_dict())
    solver = build_solver(model, prob.A, num_layers=layers)
    result = train_staged(solver, prob, config, run_dir=run.path, device=dev,
                          resume=resume)
    ckpt = run.file("model.safetensors")  # written by train_staged
    metrics = evaluate_solver(solver, prob, dev)
    run.write_json("test_metrics.json", metrics)
    typer.echo(f"trained {model} ({layers} layers) in {result.total_wall_s:.1f} s; "
               f"test NMSE at layer {layers}: {metrics['final_nmse_db']:.2f} dB\n"
               f"checkpoint: {ckpt}")


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A solver checkpoint (.safetensors)."),
    problem: Path = PROBLEM, m: int = M, n: int = N, p: float = P, snr: float = SNR,
    kappa: float = KAPPA, seed: int = SEED, device: str = DEVICE,
) -> None:
    """Per-layer test NMSE(dB) and support recovery of a trained solver."""
    from sparseprior.solvers.experiments import evaluate_solver
    from sparseprior.solvers.unrolled import load_solver

    prob = _problem(problem, m, n, p, snr, kappa, seed)
    solver = load_solver(checkpoint, A=prob.A)
    metrics = evaluate_solver(solver, prob, resolve_device(device))
    for t, v in enumerate(metrics["nmse_db"], start=1):
        typer.echo(f"layer {t:3d}  NMSE {v:8.2f} dB")
    s = metrics["support"]
    typer.echo(f"support: FP rate {s['fp_rate']:.4f}, FN rate {s['fn_rate']:.4f}, "
               f"exact support {s['exact_support_fraction']:.3f}")


@app.command()
def bench(
    suite: str = typer.Option("lista", help="'lista': the LISTA family on one problem; "
                              "'headline': the 100x benchmark over the problem suite."),
    problems: str = typer.Option("default,snr40,snr30,snr20,kappa5,kappa30",
                                 help="Headline suite: comma-separated problems."),
    n_eval: int = typer.Option(None, help="Headline: test samples used (default all)."),
    n_wall: int = typer.Option(10_000, help="Headline: problems in the wall-clock race."),
    ista_iters: int = typer.Option(5000, help="Headline: ISTA iteration cap."),
    max_train_seconds: float = typer.Option(None, help="Headline: time budget per trained "
                                            "solver."),
    models: str = typer.Option(None, help="Comma-separated solvers (default: LISTA,LISTA-CP,"
                               "LISTA-CPSS; headline: LISTA,LISTA-CPSS,ALISTA,HyperLISTA)."),
    budget: str = typer.Option("quick", help="Training budget preset: quick, cpu or paper."),
    layers: int = typer.Option(16, help="Number of unrolled layers T."),
    lams: str = typer.Option(None, help="Lambda grid for ISTA/FISTA (default "
                             "0.4,...,0.002; headline 0.1,...,0.0002)."),
    iters: int = typer.Option(None, help="ISTA/FISTA iterations (default 1000; headline: "
                              "FISTA 2000)."),
    out: Path = typer.Option(Path("runs/bench-solvers"), help="Run folder."),
    checkpoints: Path = typer.Option(None, help="Folder of <model>.safetensors to reuse "
                                     "instead of training."),
    problem: Path = PROBLEM, m: int = M, n: int = N, p: float = P, snr: float = SNR,
    kappa: float = KAPPA, seed: int = SEED, device: str = DEVICE,
) -> None:
    """NMSE per layer of learned solvers vs ISTA/FISTA over a lambda grid: table, JSON, plot.

    With --suite headline: the 100x benchmark (iterations to match, wall-clock race) over the
    problem suite (--problems; only --m/--n of the problem options apply); reuses --checkpoints
    DIR/<problem>/<solver>.safetensors when present.
    """
    from sparseprior.common.results import format_table
    from sparseprior.solvers.experiments import run_benchmark

    if suite not in ("lista", "headline"):
        raise ValueError(f"--suite must be 'lista' or 'headline', got {suite!r}")
    lam_grid = _floats(lams, "--lams") if lams else None
    names = [s.strip() for s in models.split(",") if s.strip()] if models else None
    if suite == "headline":
        _bench_headline(out, problems, names, lam_grid, iters, layers, budget, n_eval, n_wall,
                        ista_iters, max_train_seconds, checkpoints, resolve_device(device),
                        (m, n))
        return
    lam_grid = lam_grid or [0.4, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002]
    names = names or ["LISTA", "LISTA-CP", "LISTA-CPSS"]
    iters = iters or 1000
    prob = _problem(problem, m, n, p, snr, kappa, seed)
    run = RunDir(out)
    res = run_benchmark(run, prob, names, budget=budget, num_layers=layers, lams=lam_grid,
                        max_iter=iters, device=resolve_device(device),
                        checkpoints=checkpoints)
    typer.echo(format_table(res.rows))
    typer.echo("")
    typer.echo(format_table(res.classic_rows))
    typer.echo(f"\nsupport-oracle floor: {res.floor_db:.2f} dB\nresults in {run.path}")


@app.command()
def tune(
    trials: int = typer.Option(100, help="Total trials of the study (a resumed study runs only "
                               "the missing ones)."),
    timeout: float = typer.Option(300.0, help="Stop this session after this many seconds."),
    sampler: str = typer.Option("tpe", help="Optuna sampler: tpe, random or grid."),
    grid_points: int = typer.Option(5, help="Values per hyperparameter for --sampler grid."),
    storage: str = typer.Option(None, help="Optuna storage URL (default: SQLite study.db in "
                                "--out); any RDB URL lets several machines share a study."),
    study_name: str = typer.Option("hyperlista", help="Study name in the storage."),
    layers: int = typer.Option(16, help="Number of unrolled layers T."),
    val_samples: int = typer.Option(None, help="Use only the first N validation samples."),
    out: Path = typer.Option(Path("runs/tune-hyperlista"), help="Run folder."),
    tune_seed: int = typer.Option(0, help="Sampler seed."),
    problem: Path = PROBLEM, m: int = M, n: int = N, p: float = P, snr: float = SNR,
    kappa: float = KAPPA, seed: int = SEED, device: str = DEVICE,
) -> None:
    """Tune HyperLISTA's 3 hyperparameters with Optuna; save the best as a loadable solver."""
    from sparseprior.solvers.experiments import evaluate_solver
    from sparseprior.solvers.tuning import TuningConfig, tune_hyperlista
    from sparseprior.solvers.unrolled import load_solver

    prob = _problem(problem, m, n, p, snr, kappa, seed)
    config = TuningConfig(n_trials=trials, timeout_s=timeout, sampler=sampler,
                          num_layers=layers, val_samples=val_samples, grid_points=grid_points,
                          seed=tune_seed)
    dev = resolve_device(device)
    res = tune_hyperlista(prob, config, run_dir=out, storage=storage, study_name=study_name,
                          device=dev)
    metrics = evaluate_solver(load_solver(res.model_path, A=prob.A), prob, dev)
    RunDir(out).write_json("test_metrics.json", metrics)
    hp = ", ".join(f"{k}={v:.5g}" for k, v in res.best.items())
    typer.echo(f"{res.n_trials} trials in the study ({res.seconds:.1f} s this session)\n"
               f"best: {hp}\nvalidation NMSE at layer {layers}: {res.best_nmse_db:.2f} dB "
               f"(defaults {res.default_nmse_db:.2f} dB)\n"
               f"test NMSE at layer {layers}: {metrics['final_nmse_db']:.2f} dB "
               f"(median sample {metrics['median_sample_nmse_db']:.2f} dB)\n"
               f"study: {res.storage} ({res.study_name})\nsolver: {res.model_path}")


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from err


def _bench_headline(out: Path, problems: str, models: list[str] | None,
                    lams: list[float] | None, iters: int | None, layers: int, budget: str,
                    n_eval: int | None, n_wall: int, ista_iters: int,
                    max_train_seconds: float | None, checkpoints: Path | None, device,
                    size: tuple[int, int]) -> None:
    from sparseprior.common.results import format_table
    from sparseprior.solvers.headline import HeadlineConfig, headline_names, run_headline

    fields: dict = {"problems": headline_names(problems), "num_layers": layers,
                    "budget": budget, "n_eval": n_eval, "n_wall": n_wall,
                    "ista_iters": ista_iters, "max_train_seconds": max_train_seconds,
                    "m": size[0], "n": size[1]}
    if models:
        fields["models"] = tuple(models)
    if lams:
        fields["lams"] = tuple(lams)
    if iters:
        fields["fista_iters"] = iters
    rows = run_headline(out, HeadlineConfig(**fields), checkpoints=checkpoints, device=device)
    typer.echo(format_table(rows))
    typer.echo(f"\nresults in {out} (summary.md, <problem>/table.md)")


def _images(value: str) -> list[str] | Path:
    """A folder of images, or comma-separated bundled names / files."""
    return Path(value) if Path(value).is_dir() else [v.strip() for v in value.split(",")
                                                      if v.strip()]


@app.command()
def cs(
    rate: float = typer.Option(0.5, help="Sampling rate M/d in (0, 1]."),
    train_images: str = typer.Option("astronaut,coffee,chelsea,rocket,brick,grass",
                                     help="Bundled scikit-image names/files, or a folder."),
    test_images: str = typer.Option("camera,coins,moon", help="Bundled names/files, or a "
                                    "folder."),
    dictionary: str = typer.Option("mbdl", help="mbdl (MiniBatchDictionaryLearning) or dct."),
    atoms: int = typer.Option(256, help="Dictionary atoms (dct: exactly patch_size^2)."),
    patch_size: int = typer.Option(16, help="Patch side in pixels."),
    n_train: int = typer.Option(8000, help="Random training patches."),
    models: str = typer.Option("LISTA-CPSS,ALISTA,HyperLISTA",
                               help="Learned solvers (comma-separated)."),
    budget: str = typer.Option("quick", help="Staged-training preset of trained solvers."),
    max_train_seconds: float = typer.Option(None, help="Time budget per trained solver."),
    fista_iters: int = typer.Option(500, help="FISTA iterations."),
    seed: int = SEED,
    out: Path = typer.Option(Path("runs/solvers-cs"), help="Run folder."),
    device: str = DEVICE,
) -> None:
    """Compressive sensing of real image patches: PSNR per test image, FISTA vs learned."""
    from sparseprior.common.results import format_table
    from sparseprior.solvers.cs import CSConfig, run_cs

    config = CSConfig(rate=rate, size=patch_size, n_atoms=atoms, dictionary=dictionary,
                      n_train=n_train, models=tuple(m.strip() for m in models.split(",")
                                                    if m.strip()),
                      budget=budget, max_train_seconds=max_train_seconds,
                      fista_iters=fista_iters, seed=seed)
    data = run_cs(RunDir(out), config, train_images=_images(train_images),
                  test_images=_images(test_images), device=resolve_device(device))
    typer.echo(format_table(data["rows"]))
    typer.echo(f"\nA = Phi D: ({data['m']}, {data['n']}); {data['total_seconds']:.1f} s; "
               f"results in {out}")
