"""Benchmark: EarlyBERT on all-MiniLM-L6-v2, binary tweet sentiment, max length 64, 3 seeds.

Targets (issue 14), checked per seed and on the mean over seeds:

* EarlyBERT test accuracy within 1.0 point of full fine-tuning (same epochs);
* EarlyBERT >= 0.5 point above the random ticket (same structure, random heads/neurons);
* total training wall time (search + slim fine-tuning) >= 35% below full fine-tuning;
* slim model inference >= 1.3x faster at batch 32, one CPU thread; encoder parameters >= 30%
  fewer.

Also reported: full fine-tuning for EarlyBERT's wall time (as a step budget).

Usage::

    python benchmarks/earlybert.py                       # full: ~18k tweets, 1 epoch, 3 seeds
    python benchmarks/earlybert.py --max-train 512 --max-eval 256 --max-steps 40 \\
        --search-max-steps 30 --batch-size 16 --seeds 0   # reduced (2-core CPU)

A seed's baseline phases can run beside it on another core: start the main run, then the
same command with ``--phase full`` (and ``--phase random_ticket`` once the search is done);
the main run picks their results up or waits for them. ``--phase random_even`` (after the
search) adds a second random control that only a worker runs: the ticket's total heads and
neurons spread evenly over the layers, so the search's per-layer allocation is tested too.

``--full-from runs/eb`` reuses the full fine-tunings of an earlier ``--out`` folder whose
settings differ only in how the ticket is found (e.g. ``--mask-every``): the new folders get
their full phase copied, marked ``shared_from``, and run the search and the slim training. The
earlier folder's even random control is shared too where the new search's totals give the same
masks (checked mask by mask after the search).

Seeds run into separate folders are summarised together, without training, by::

    python benchmarks/earlybert.py --collect runs/eb-s0,runs/eb-s1,runs/eb-s2 --out runs/eb-3

``--estimate`` runs only each seed's search and the slim/full training-step timing, no
fine-tuning, and reports the training time EarlyBERT would save (``summary_estimate.json``);
a later full run in the same ``--out`` goes on from there. The searches of several seeds can
run side by side with ``--phase search`` first, so the timing runs alone.

and with ``--retime`` their slim/full timing is measured again with the current code first
(``--timing-rounds`` inference rounds, half as many training-step rounds; no training; written
to ``seed<k>/earlybert_retimed.json``, the earlier figures kept under ``retimed_from``).

Writes ``<out>/seed<k>/`` run folders (``earlybert.json``, plots, slim model) and
``<out>/summary.json`` (per-seed claims and the means over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
from pathlib import Path

from sparseprior.common.results import format_table
from sparseprior.nlp.experiment import (
    WORKER_PHASES,
    EarlyBertConfig,
    describe_phase,
    estimate_rows,
    estimate_run,
    retime_run,
    reuse_baselines,
    run_earlybert,
    run_earlybert_phase,
)
from sparseprior.nlp.sections import claims, section_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = section_config("full")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-earlybert")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--data", default=full.data,
                   help="tweets-binary, tweets-3class or a .csv/.jsonl file (text, label)")
    p.add_argument("--max-train", type=int, default=full.max_train)
    p.add_argument("--max-eval", type=int, default=full.max_eval)
    p.add_argument("--epochs", type=int, default=full.epochs)
    p.add_argument("--max-steps", type=int, default=full.max_steps)
    p.add_argument("--search-max-steps", type=int, default=full.search_max_steps)
    p.add_argument("--mask-every", type=int, default=full.mask_every)
    p.add_argument("--fifo-size", type=int, default=full.fifo_size)
    p.add_argument("--batch-size", type=int, default=full.batch_size)
    p.add_argument("--lr", type=float, default=full.lr)
    p.add_argument("--head-ratio", type=float, default=full.head_ratio,
                   help="fraction of heads removed per layer (paper: 1/3)")
    p.add_argument("--ffn-ratio", type=float, default=full.ffn_ratio,
                   help="fraction of FFN neurons removed (paper: 0.4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training")
    p.add_argument("--timing-rounds", type=int, default=full.timing_rounds)
    p.add_argument("--phase", choices=WORKER_PHASES, default=None,
                   help="phase worker: run only this phase of each seed's run folder "
                        "(start it beside the main run, same options, to use another core)")
    p.add_argument("--estimate", action="store_true",
                   help="only the search and the slim/full step timing per seed: the training "
                        "time EarlyBERT would save, no fine-tuning")
    p.add_argument("--collect", default=None,
                   help="comma-separated --out folders of finished runs: summarise their seeds "
                        "(seed*/earlybert.json) into --out, no training")
    p.add_argument("--retime", action="store_true",
                   help="with --collect: measure the slim/full timing of each finished seed "
                        "again with this code (--timing-rounds), no training")
    p.add_argument("--no-same-time-baseline", action="store_true",
                   help="skip full fine-tuning for EarlyBERT's time budget (saves ~1/4 of a run)")
    p.add_argument("--no-random-ticket", action="store_true",
                   help="skip the random ticket (e.g. a time-only rerun; a later run may add it)")
    p.add_argument("--full-from", default=None,
                   help="an earlier --out folder whose seeds differ only in the ticket's "
                        "settings (mask_every, ratios, ...): reuse its full fine-tunings "
                        "and, where the masks are the same, its even random control, instead "
                        "of running them again (marked shared_from)")
    return p.parse_args(argv)


def config_for(args: argparse.Namespace, seed: int) -> EarlyBertConfig:
    return section_config("full").replace(
        seed=seed, data=args.data, max_train=args.max_train, max_eval=args.max_eval,
        epochs=args.epochs,
        max_steps=args.max_steps, search_max_steps=args.search_max_steps,
        mask_every=args.mask_every, fifo_size=args.fifo_size, batch_size=args.batch_size,
        lr=args.lr, head_ratio=args.head_ratio, ffn_ratio=args.ffn_ratio,
        num_threads=args.threads, timing_rounds=args.timing_rounds,
        same_time_baseline=not args.no_same_time_baseline,
        random_ticket=not args.no_random_ticket,
        warmup_steps=min(section_config("full").warmup_steps, args.search_max_steps // 3))


def collect(folders: list[Path], retime_rounds: int | None = None) -> dict[int, dict]:
    """The finished results (``seed<k>/earlybert.json``) in ``folders``, by seed; with
    ``retime_rounds`` their timing measured again (:func:`retime_run`)."""
    per_seed: dict[int, dict] = {}
    for folder in folders:
        files = sorted(folder.glob("seed*/earlybert.json"))
        if not files:
            raise SystemExit(f"error: {folder} holds no finished seed (seed*/earlybert.json)")
        for file in files:
            seed = int(file.parent.name.removeprefix("seed"))
            if seed in per_seed:
                raise SystemExit(f"error: seed {seed} appears twice ({file})")
            per_seed[seed] = json.loads(file.read_text()) if retime_rounds is None else \
                retime_run(file.parent, rounds=retime_rounds)
    return dict(sorted(per_seed.items()))


def summarize(per_seed: dict[int, dict], command: str) -> dict:
    """Per-seed claims and the means over seeds of the figures the targets judge."""
    rows = [{"seed": seed, "claim": c.claim, "target": c.target, "measured": c.measured,
             "verdict": c.verdict}
            for seed, result in per_seed.items() for c in claims(result, decide=True)]

    def mean(fn) -> float | None:
        values = [fn(r) for r in per_seed.values()]
        return None if any(v is None for v in values) else statistics.mean(values)

    def acc(phase: str):
        return lambda r: None if r.get(phase) is None else 100 * r[phase]["test_acc"]

    return {
        "command": command,
        "seeds": list(per_seed),
        "mean": {
            "full_acc": mean(acc("full")),
            "earlybert_acc": mean(acc("earlybert")),
            "random_acc": mean(acc("random_ticket")),
            "random_even_acc": mean(acc("random_even")),
            "same_time_acc": mean(acc("full_same_time")),
            "time_saving_pct": mean(lambda r: r["wall_time"]["saving_pct"]),
            "time_saving_from_step_timing_pct": mean(
                lambda r: r["wall_time"].get("saving_pct_from_step_timing")),
            "inference_speedup": mean(lambda r: r["inference_timing_b32"]["speedup"]),
            "encoder_params_reduction_pct": mean(
                lambda r: r["params"]["encoder_layers_reduction_pct"]),
            "drawn_step": mean(lambda r: r["search"]["steps"]),
        },
        "differences": {f"earlybert_minus_{phase}": spread([
            None if acc(phase)(r) is None else acc("earlybert")(r) - acc(phase)(r)
            for r in per_seed.values()]) for phase in ("full", "random_ticket", "random_even")},
        "claims": rows,
    }


def spread(values: list[float | None]) -> dict | None:
    """Per-seed accuracy differences (points), their mean, sample standard deviation and
    standard error of the mean (``None`` where a seed lacks the phase; sd/sem need 2 seeds):
    how far a mean over this few seeds can be trusted."""
    if not values or any(v is None for v in values):
        return None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"per_seed": values, "mean": statistics.mean(values), "sd": sd,
            "sem": None if sd is None else sd / len(values) ** 0.5}


def _command(argv: list[str] | None) -> str:
    return "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])


def estimate(seeds: list[int], args: argparse.Namespace, out: Path,
             argv: list[str] | None) -> None:
    """``--estimate``: search + step timing per seed, the saving per seed and its mean."""
    per_seed = {seed: estimate_run(config_for(args, seed), out / f"seed{seed}")
                for seed in seeds}
    rows = estimate_rows(per_seed)
    mean = {key: round(statistics.mean(r[key] for r in rows), 3) for key in rows[0]
            if key != "seed"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary_estimate.json").write_text(json.dumps(
        {"command": _command(argv), "seeds": seeds, "rows": rows, "mean": mean}, indent=2))
    print(format_table(rows))
    print(format_table([{"seed": "mean", **mean}]))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.retime and not args.collect:
        raise SystemExit("error: --retime re-measures finished runs; give them with --collect")
    if args.estimate and (args.collect or args.phase):
        raise SystemExit("error: --estimate runs its own search and timing; drop --collect/--phase")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    if args.phase:
        for seed in seeds:
            done = run_earlybert_phase(config_for(args, seed), out / f"seed{seed}", args.phase)
            print(f"seed {seed}: {describe_phase(args.phase, done)}")
        return
    if args.estimate:
        estimate(seeds, args, out, argv)
        return
    if args.collect:
        per_seed = collect([Path(f) for f in args.collect.split(",") if f.strip()],
                           args.timing_rounds if args.retime else None)
    else:
        per_seed = {}
        for seed in seeds:
            if args.full_from:
                shared = reuse_baselines(config_for(args, seed),
                                         Path(args.full_from) / f"seed{seed}", out / f"seed{seed}")
                print(f"seed {seed}: shared from {args.full_from}: {', '.join(shared)}")
            per_seed[seed] = run_earlybert(config_for(args, seed), out / f"seed{seed}")
    summary = summarize(per_seed, _command(argv))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary["claims"]))
    print(format_table([{k: _rounded(v, 3) for k, v in summary["mean"].items()}]))
    print(format_table([{"difference (points)": name, "mean": _rounded(d["mean"]),
                         "sd over seeds": _rounded(d["sd"]), "sem": _rounded(d["sem"])}
                        for name, d in summary["differences"].items() if d]))


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    main()
