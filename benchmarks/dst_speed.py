"""Benchmark: what sparse training costs per step, and what CSR inference gains.

Claims checked (table printed, JSON + PNG saved into ``--out``):

* training-step time of masked training (static mask, MaskSet hooks) relative to dense, measured
  side by side in one run with interleaved rounds (target <= 1.25x); and the extra wall time of
  a RigL update step (dense-gradient copy + drop-and-grow + mask/optimizer-state update) over an
  ordinary step of the same run;
* inference of LeNet-300-100 exported to CSR linear layers at 95% and 98% sparsity vs the
  dense (masked) model, batch 1 and 256, one thread, as a ratio measured in one run.

Masks are simulated during training: the masked model does the same dense FLOPs as the dense
one, plus the mask multiplications, so no training speed-up is expected or claimed.

The step times come from the real training loop (``Trainer`` + callbacks), one round of
``--steps`` steps per variant in turn, ``--rounds`` times; the median per-step time over all
rounds is reported. Inference uses trained RigL models from ``--grid`` (a
``benchmarks/dst_fashion_mnist.py`` folder) when present, else LeNet-300-100 with random ERK
masks at the same per-layer counts (latency depends on the counts, not on the values).

Usage::

    python benchmarks/dst_speed.py --out runs/bench-dst-speed            # ~2 min, 1 thread
    python benchmarks/dst_speed.py --device cuda --out runs/bench-dst-speed-gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.device import resolve_device
from sparseprior.common.runs import RunDir
from sparseprior.dst import (
    DSTConfig,
    DSTRunConfig,
    DynamicSparsity,
    compare_latency,
    initial_masks,
    load_run_model,
    load_splits,
    to_sparse_inference,
)
from sparseprior.dst.experiments import StepClock
from sparseprior.dst.train import build_seeded_model
from sparseprior.engine import TrainConfig, Trainer
from sparseprior.report import format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-dst-speed")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder")
    p.add_argument("--device", default="cpu", help="device of the training-step timing")
    p.add_argument("--models", default="lenet300", help="comma-separated: lenet300,lenet5")
    p.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the step timing")
    p.add_argument("--steps", type=int, default=120, help="steps per round and variant")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--delta-t", type=int, default=20,
                   help="RigL update interval while timing (more update steps to time)")
    p.add_argument("--amortise-delta-t", type=int, default=100,
                   help="update interval for the amortised cost (the grid's delta_t)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--inference-sparsities", default="0.95,0.98")
    p.add_argument("--repeats", type=int, default=21, help="interleaved inference rounds")
    p.add_argument("--grid", default="runs/bench-dst-fmnist",
                   help="accuracy-grid folder with trained lenet300 RigL runs (optional)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-inference", action="store_true", help="only the step timing")
    return p.parse_args(argv)


def _variants(model_name: str, sparsity: float, delta_t: int) -> dict[str, DSTConfig]:
    return {"dense": DSTConfig(method="dense"),
            "masked (static)": DSTConfig(method="static", sparsity=sparsity),
            "rigl": DSTConfig(method="rigl", sparsity=sparsity, delta_t=delta_t, t_end=1.0)}


def step_times(model_name: str, args: argparse.Namespace, splits: Any,
               device: torch.device) -> dict[str, Any]:
    """Interleaved rounds of ``--steps`` training steps for dense, masked and RigL."""
    variants = _variants(model_name, args.sparsity, args.delta_t)
    run_cfg = DSTRunConfig(model=model_name)
    models = {}
    for name, cfg in variants.items():
        model = build_seeded_model(run_cfg, splits.input_shape, splits.num_classes)
        models[name] = (model, initial_masks(model, cfg))
    train = TrainConfig(epochs=1, max_steps=args.steps, batch_size=args.batch_size, lr=0.05,
                        momentum=0.9, weight_decay=1e-4, device=str(device), log_every=0,
                        eval_every=0, checkpoint_every=0, progress=False,
                        num_threads=args.threads if device.type == "cpu" else None)
    plain: dict[str, list[float]] = {n: [] for n in variants}
    update_steps: list[float] = []
    update_seconds: list[float] = []
    for r in range(args.rounds):
        for name, cfg in variants.items():
            model, masks = models[name]
            dst = DynamicSparsity(cfg)
            timer = StepClock(sync=device.type == "cuda")
            trainer = Trainer(model, splits.train, train.replace(seed=r), masks=masks,
                              callbacks=[dst, timer])
            trainer.fit()
            updated = {u["step"] for u in dst.updates}
            update_seconds += [u["seconds"] for u in dst.updates]
            for step, seconds in timer.times.items():
                (update_steps if step in updated else plain[name]).append(seconds)
    med = {n: statistics.median(v) for n, v in plain.items()}
    rigl_update = statistics.median(update_steps) if update_steps else float("nan")
    return {
        "model": model_name, "device": str(device), "sparsity": args.sparsity,
        "steps_per_round": args.steps, "rounds": args.rounds, "delta_t": args.delta_t,
        "median_step_ms": {n: 1e3 * v for n, v in med.items()},
        "masked_over_dense": med["masked (static)"] / med["dense"],
        "rigl_plain_step_over_dense": med["rigl"] / med["dense"],
        "rigl_update_step_ms": 1e3 * rigl_update,
        "rigl_update_extra_ms": 1e3 * (rigl_update - med["rigl"]),
        "rigl_update_callback_ms": 1e3 * statistics.median(update_seconds)
        if update_seconds else float("nan"),
        "n_update_steps": len(update_steps),
        "amortise_delta_t": args.amortise_delta_t,
        "rigl_amortised_over_dense": (med["rigl"] * (args.amortise_delta_t - 1) + rigl_update)
        / args.amortise_delta_t / med["dense"],
    }


def _trained_or_random(sparsity: float, args: argparse.Namespace, splits: Any
                       ) -> tuple[torch.nn.Module, str]:
    folder = Path(args.grid) / f"lenet300-rigl-{sparsity:g}"
    if (folder / "summary.json").exists():
        _, model, _ = load_run_model(folder)
        return model, f"trained RigL run {folder}"
    model = build_seeded_model(DSTRunConfig(), splits.input_shape, splits.num_classes)
    initial_masks(model, DSTConfig(method="static", sparsity=sparsity))
    return model, "random ERK mask (no trained run found)"


def inference(args: argparse.Namespace, splits: Any) -> dict[str, Any]:
    """CSR vs dense LeNet-300-100, one thread, interleaved, at each sparsity."""
    out: dict[str, Any] = {"rows": [], "sources": {}}
    for sparsity in [float(s) for s in args.inference_sparsities.split(",") if s]:
        model, source = _trained_or_random(sparsity, args, splits)
        model = model.to("cpu").eval()
        sparse = to_sparse_inference(model)
        x = splits.test.tensors[0][:512]
        with torch.no_grad():
            diff = float((model(x) - sparse(x)).abs().max())
        rows = compare_latency({"dense": model, "csr": sparse}, tuple(splits.input_shape),
                               batch_sizes=(1, 256), repeats=args.repeats,
                               threads=args.threads)
        for row in rows:
            out["rows"].append({"sparsity": sparsity, **row, "max_abs_diff": diff})
        out["sources"][str(sparsity)] = source
    return out


def plot(path: Path, speed: list[dict[str, Any]], infer: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels, values = [], []
    for s in speed:
        for name, ms in s["median_step_ms"].items():
            labels.append(f"{s['model']}\n{name}")
            values.append(ms / s["median_step_ms"]["dense"])
        labels.append(f"{s['model']}\nrigl update step")
        values.append(s["rigl_update_step_ms"] / s["median_step_ms"]["dense"])
    axes[0].bar(range(len(values)), values, color="tab:blue")
    axes[0].axhline(1.25, color="red", ls="--", lw=1, label="target 1.25x")
    axes[0].set_xticks(range(len(values)), labels, fontsize=7)
    axes[0].set_ylabel("step time / dense step time")
    axes[0].set_title(f"training step ({speed[0]['device']}, median)")
    axes[0].legend()
    csr = [r for r in infer["rows"] if r["model"] == "csr"]
    if not csr:
        axes[1].set_visible(False)
    axes[1].bar(range(len(csr)), [r["speedup"] for r in csr], color="tab:green")
    axes[1].axhline(1.0, color="gray", ls="--", lw=1)
    axes[1].set_xticks(range(len(csr)), [f"{r['sparsity']:.0%}\nbatch {r['batch']}"
                                         for r in csr])
    axes[1].set_ylabel("dense time / CSR time")
    axes[1].set_title("LeNet-300-100 inference, CSR vs dense, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = RunDir(args.out)
    start = time.perf_counter()
    splits = load_splits(DSTRunConfig(data_root=args.data_root))
    speed = [step_times(m, args, splits, device) for m in args.models.split(",") if m]
    infer = {"rows": [], "sources": {}} if args.skip_inference else inference(args, splits)
    plot(out.file("dst_speed.png"), speed, infer)
    step_rows = [{"model": s["model"], "device": s["device"],
                  "dense ms": round(s["median_step_ms"]["dense"], 3),
                  "masked ms": round(s["median_step_ms"]["masked (static)"], 3),
                  "masked/dense": round(s["masked_over_dense"], 3),
                  "rigl step ms": round(s["median_step_ms"]["rigl"], 3),
                  "rigl update step ms": round(s["rigl_update_step_ms"], 3),
                  "update extra ms": round(s["rigl_update_extra_ms"], 3),
                  f"rigl amortised/dense (dt={s['amortise_delta_t']})":
                      round(s["rigl_amortised_over_dense"], 3)} for s in speed]
    infer_rows = [{"sparsity": r["sparsity"], "batch": r["batch"], "model": r["model"],
                   "ms": round(r["ms"], 4), "speedup vs dense": round(r["speedup"], 2)}
                  for r in infer["rows"]]
    claims = [f"[{'PASS' if s['masked_over_dense'] <= 1.25 else 'MISS'}] {s['model']}: masked "
              f"step / dense step = {s['masked_over_dense']:.3f} (target <= 1.25)"
              for s in speed]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0],
                                                             *(argv or sys.argv[1:])])
    out.write_json("benchmark.json", {"command": command, "args": vars(args),
                                      "torch": torch.__version__, "step_time": speed,
                                      "inference": infer,
                                      "wall_seconds": time.perf_counter() - start})
    text = (format_table(step_rows) + "\n\n" + format_table(infer_rows) + "\n\n"
            + "\n".join(claims) + "\n\ninference models: " + json.dumps(infer["sources"]) + "\n")
    out.write_text("table.md", text)
    print(text)
    print(f"wall {time.perf_counter() - start:.0f} s; results in {out.path}")


if __name__ == "__main__":
    main()
