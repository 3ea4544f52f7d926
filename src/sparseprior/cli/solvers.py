"""``sparseprior solvers ...``: thin commands over :mod:`sparseprior.solvers`.

Options come from the config dataclasses (:mod:`sparseprior.cli.options`): problem options
(``--m``, ``--n``, ``--snr-db``, ...) and fitting options (``--budget``, ``--num-layers``, ...)
are the fields of :class:`~sparseprior.solvers.problems.ProblemConfig` and
:class:`~sparseprior.solvers.fit.FitConfig`; ``--config file.json`` loads a whole config (a
run's ``config.json``) and options given beside it override it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sparseprior.cli.options import config_options
from sparseprior.common.device import resolve_device
from sparseprior.common.runs import RunDir
from sparseprior.solvers.cs import TEST_IMAGES, TRAIN_IMAGES, CSConfig
from sparseprior.solvers.experiments import BenchConfig, FitRun, TuneRun
from sparseprior.solvers.headline import HeadlineConfig
from sparseprior.solvers.problems import ProblemConfig
from sparseprior.solvers.recover import RecoveryConfig

app = typer.Typer(help="Learned sparse solvers (LISTA family) and classic baselines.",
                  no_args_is_help=True)

PROBLEM_FILE = typer.Option(None, "--problem", help="A problem file (.npz/.safetensors) from "
                            "'solvers problem'; replaces the generated problem.")
DEVICE = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:i]'.")


def long_run_note(text: str) -> None:
    """Warn before a command that takes long (stderr, so piped output stays clean)."""
    typer.echo(f"note: {text}", err=True)


@app.command()
@config_options(problem=ProblemConfig)
def problem(problem: ProblemConfig,
            out: Path = typer.Argument(..., help="Output file: .npz or .safetensors.")) -> None:
    """Generate a problem (A and the fixed validation/test sets) and save it."""
    from sparseprior.solvers.fit import describe_problem, make_problem, write_problem

    prob = make_problem(problem)
    write_problem(prob, out)
    typer.echo(f"{describe_problem(prob)}\n  saved to {out}")


@app.command()
@config_options(flatten=("fit", "problem"), run=FitRun)
def train(run: FitRun, out: Path = typer.Option(None, help="Run folder (default "
                                                "runs/solvers/<solver>)."),
          resume: bool = typer.Option(True, help="Continue from the run folder's last stage."),
          problem_file: Path = PROBLEM_FILE, device: str = DEVICE) -> None:
    """Fit a learned solver as it declares: staged training, or a search of its
    hyperparameters (tuned solvers such as HyperLISTA); save it and its test metrics."""
    from sparseprior.solvers.experiments import run_fit

    if run.fit.budget != "quick":
        long_run_note(f"budget {run.fit.budget!r} trains every layer in 3 stages: 15 min to "
                      "hours on a 2-core CPU (budget 'quick': about a minute)")
    folder = RunDir(out or Path("runs/solvers") / run.solver)
    res = run_fit(folder, run, problem_file=problem_file, resume=resume,
                  device=resolve_device(device), progress=None)
    T = len(res["nmse_db"])
    typer.echo(f"{res['kind']} {run.solver} ({T} layers) in {res['seconds']:.1f} s; "
               f"test NMSE at layer {T}: {res['final_nmse_db']:.2f} dB\n"
               f"checkpoint: {res['checkpoint']}")


@app.command("eval")
@config_options(problem=ProblemConfig)
def evaluate(problem: ProblemConfig,
             checkpoint: Path = typer.Argument(..., help="A solver checkpoint (.safetensors)."),
             problem_file: Path = PROBLEM_FILE, device: str = DEVICE) -> None:
    """Per-layer test NMSE(dB) and support recovery of a trained solver."""
    from sparseprior.solvers.experiments import run_eval

    metrics = run_eval(checkpoint, problem, problem_file=problem_file,
                       device=resolve_device(device))
    for t, v in enumerate(metrics["nmse_db"], start=1):
        typer.echo(f"layer {t:3d}  NMSE {v:8.2f} dB")
    s = metrics["support"]
    typer.echo(f"support: FP rate {s['fp_rate']:.4f}, FN rate {s['fn_rate']:.4f}, "
               f"exact support {s['exact_support_fraction']:.3f}")


@app.command()
@config_options(flatten=("fit", "problem"), bench=BenchConfig)
def bench(bench: BenchConfig,
          out: Path = typer.Option(Path("runs/bench-solvers"), help="Run folder."),
          checkpoints: Path = typer.Option(None, help="Folder of <solver>.safetensors to "
                                           "reuse instead of fitting."),
          problem_file: Path = PROBLEM_FILE, device: str = DEVICE) -> None:
    """NMSE per layer of learned solvers vs ISTA/FISTA over a lambda grid: table, JSON, plot
    (the headline suite is 'sparseprior solvers headline')."""
    from sparseprior.common.results import format_table
    from sparseprior.solvers.experiments import run_benchmark
    from sparseprior.solvers.fit import make_problem

    res = run_benchmark(RunDir(out), make_problem(bench.problem, problem_file), bench,
                        device=resolve_device(device), checkpoints=checkpoints)
    typer.echo(f"{format_table(res.rows)}\n\n{format_table(res.classic_rows)}\n\n"
               f"support-oracle floor: {res.floor_db:.2f} dB\nresults in {out}")


@app.command()
@config_options(headline=HeadlineConfig)
def headline(headline: HeadlineConfig,
             out: Path = typer.Option(Path("runs/bench-solvers-headline"), help="Run folder."),
             checkpoints: Path = typer.Option(None, help="Reuse DIR/<problem>/<solver>"
                                              ".safetensors instead of fitting."),
             device: str = DEVICE) -> None:
    """The 100x benchmark over the problem suite: iterations ISTA/FISTA need to match each
    learned solver, and a wall-clock race (slow: the full suite fits every solver on every
    problem)."""
    from sparseprior.common.results import format_table
    from sparseprior.solvers.headline import run_headline

    if checkpoints is None and headline.m * headline.n >= 250 * 500:
        long_run_note(f"the headline suite fits {len(headline.models)} solvers on "
                      f"{len(headline.problems)} problems and races {headline.n_wall} problems:"
                      " hours on a 2-core CPU (pass --checkpoints to reuse trained solvers)")
    rows = run_headline(out, headline, checkpoints=checkpoints, device=resolve_device(device))
    typer.echo(f"{format_table(rows)}\n\nresults in {out} (summary.md, <problem>/table.md)")


@app.command()
@config_options(flatten=("problem",), run=TuneRun)
def tune(run: TuneRun,
         storage: str = typer.Option(None, help="Optuna storage URL (default: SQLite study.db "
                                     "in --out); any RDB URL lets machines share a study."),
         out: Path = typer.Option(Path("runs/tune-hyperlista"), help="Run folder."),
         problem_file: Path = PROBLEM_FILE, device: str = DEVICE) -> None:
    """Tune HyperLISTA's 3 hyperparameters with Optuna; save the best as a loadable solver."""
    from sparseprior.solvers.experiments import run_tune

    res, metrics = run_tune(RunDir(out), run, storage=storage, problem_file=problem_file,
                            device=resolve_device(device))
    T = len(metrics["nmse_db"])
    hp = ", ".join(f"{k}={v:.5g}" for k, v in res.best.items())
    typer.echo(f"{res.n_trials} trials in the study ({res.seconds:.1f} s this session)\n"
               f"best: {hp}\nvalidation NMSE at layer {T}: {res.best_nmse_db:.2f} dB "
               f"(defaults {res.default_nmse_db:.2f} dB)\n"
               f"test NMSE at layer {T}: {metrics['final_nmse_db']:.2f} dB "
               f"(median sample {metrics['median_sample_nmse_db']:.2f} dB)\n"
               f"study: {res.storage} ({res.study_name})\nsolver: {res.model_path}")


@app.command()
@config_options(flatten=("fit",), cs=CSConfig)
def cs(cs: CSConfig,
       train_images: str = typer.Option(None, help="Bundled scikit-image names or files "
                                        "(comma-separated), or a folder (default: "
                                        f"{','.join(TRAIN_IMAGES)})."),
       test_images: str = typer.Option(None, help="As --train-images (default: "
                                       f"{','.join(TEST_IMAGES)})."),
       out: Path = typer.Option(Path("runs/solvers-cs"), help="Run folder."),
       device: str = DEVICE) -> None:
    """Compressive sensing of real image patches: PSNR per test image, FISTA vs learned."""
    from sparseprior.common.results import format_table
    from sparseprior.solvers.cs import run_cs

    images = {k: v for k, v in (("train_images", train_images), ("test_images", test_images))
              if v is not None}
    data = run_cs(RunDir(out), cs, device=resolve_device(device), **images)
    typer.echo(f"{format_table(data['rows'])}\n\nA = Phi D: ({data['m']}, {data['n']}); "
               f"{data['total_seconds']:.1f} s; results in {out}")


@app.command()
@config_options(recovery=RecoveryConfig)
def recover(recovery: RecoveryConfig,
            matrix: Path = typer.Argument(..., help="A, (m, n): .npy, or .npz/.safetensors "
                                          "holding one array (or one named 'A')."),
            measurements: Path = typer.Argument(..., help="y, (m,) or (batch, m), same "
                                                "formats (one array or one named 'y')."),
            out: Path = typer.Argument(..., help="Where x (batch, n) goes: .npy/.npz/"
                                       ".safetensors."),
            checkpoint: Path = typer.Option(None, help="A trained solver for this A (from "
                                            "'solvers train' or 'tune'); default HyperLISTA."),
            save_solver_to: Path = typer.Option(None, "--save-solver", help="Save the solver "
                                                "used (e.g. calibrated) to reuse it."),
            device: str = DEVICE) -> None:
    """Recover sparse x from your own A and y with a learned or calibrated solver."""
    from sparseprior.solvers import recover as rec
    from sparseprior.solvers.unrolled import load_solver, save_solver

    A = rec.read_array(matrix, "A", ndim=(2,))
    y = rec.read_array(measurements, "y")
    solver = None if checkpoint is None else load_solver(checkpoint, A=A)
    result = rec.recover(A, y, solver, recovery, device=resolve_device(device))
    rec.write_array(out, result.x)
    if save_solver_to is not None:
        save_solver(result.solver.cpu(), save_solver_to)
    res, support = result.residual, result.support.float()
    refit = ", debiased" if result.debiased else ", Bayes refit" if result.bayes_refit else ""
    typer.echo(f"{len(result.x)} x {A.shape[1]} recovered with {result.solver.name} "
               f"({result.solver.num_layers} layers{refit})"
               f" in {result.seconds * 1e3:.1f} ms\n"
               f"relative residual ||Ax - y|| / ||y||: median {res.median():.3g}, max "
               f"{res.max():.3g}\nnon-zeros per sample: mean {support.mean():.1f}, max "
               f"{support.max():.0f}\nx written to {out}")
