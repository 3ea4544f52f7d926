"""Edge fine-tuning in compressed form vs fine-tuning the dense model, on shifted Fashion-MNIST.

The shift (``ShiftConfig`` in :mod:`sparseprior.compress.finetune`; fixed, applied to the
training and test images alike): rotation by ``--rotate`` degrees (bilinear, border padding)
and Gaussian noise of standard deviation ``--noise`` (in standardised pixel units; seeded,
different draws for train and test).

Methods, each fine-tuned for the same ``--epochs`` with Adam (``--lr``, cosine), batch 128, on
the same shifted training images, each in a fresh process (so the peak-memory figure of one
does not hide in memory another left behind):

* ``dense``: the fp32 original (``--dense``, e.g. the pipeline's ``step_0.sppk``), every
  parameter trained — the baseline;
* ``compressed: scales+biases``: the packed model, mask and codes fixed;
* ``compressed: scales+biases+codes(LAYERS)``: also the codes of ``--code-layers`` by QAT on
  the fixed grid (the default design);
* ``decoded, dense fine-tuning``: the packed model decoded to fp32 and trained as a dense
  model (structure released; a reference, not a deployable form).

Reported per method: shifted-test accuracy before/after, the recovery (after - before), its
ratio to the dense model's recovery, trainable values, peak training memory (growth of the
process's peak RSS during training) and, for the compressed forms, the file size before/after.

    OMP_NUM_THREADS=1 python benchmarks/compress_finetune.py runs/serve_lenet300/step_2.sppk \\
        --dense runs/serve_lenet300/step_0.sppk --subset 60000 --epochs 3 \\
        --out runs/compress_finetune
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sparseprior.common.results import format_table  # noqa: E402
from sparseprior.compress.finetune import (  # noqa: E402
    FinetuneConfig,
    ShiftConfig,
    accuracy_on,
    finetune_packed,
    fit_measured,
    shifted,
)
from sparseprior.compress.pack import unpack  # noqa: E402
from sparseprior.data import load_dataset  # noqa: E402


def shifted_splits(shift: ShiftConfig, subset: int | None, seed: int):
    splits = load_dataset("fashion-mnist", subset=subset, seed=seed)
    return shifted(splits.train, shift, 0), shifted(splits.test, shift, 1)


def run_method(job: dict[str, Any]) -> dict[str, Any]:
    """One method in this (fresh) process; returns its row."""
    torch.set_num_threads(1)
    shift = ShiftConfig(**job["shift"])
    train, test = shifted_splits(shift, job["subset"], job["seed"])
    config = FinetuneConfig(epochs=job["epochs"], lr=job["lr"], seed=job["seed"],
                            code_layers=job.get("code_layers", []), code_lr=job["code_lr"])
    start = time.time()
    if job["kind"] == "compressed":
        res = finetune_packed(job["packed"], train, job["out"], config, test_set=test)
        row = {"acc before": res.acc_before, "acc after": res.acc_after,
               "trainable": res.trainable, "total": res.total,
               "peak MB": res.peak_memory_bytes and res.peak_memory_bytes / 2**20,
               "size before": res.size_before, "size after": res.size_after}
    else:
        model = unpack(job["packed"]).train()
        before = accuracy_on(model, test)
        _, peak = fit_measured(model, train, config.train_config())
        row = {"acc before": before, "acc after": accuracy_on(model, test),
               "trainable": sum(p.numel() for p in model.parameters()),
               "total": sum(p.numel() for p in model.parameters()),
               "peak MB": peak and peak / 2**20, "size before": None, "size after": None}
    row["seconds"] = round(time.time() - start, 1)
    return {"method": job["name"], **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packed", type=Path, help="the compressed packed model (.sppk)")
    parser.add_argument("--dense", type=Path, required=True,
                        help="the fp32 original as a packed file (the pipeline's step_0.sppk)")
    parser.add_argument("--subset", type=int, default=None, help="training images (all: 60k)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rotate", type=float, default=30.0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--code-layers", default="classifier",
                        help="comma-separated layers whose codes are trained (full size: "
                             "features.0,classifier recovers more but the re-packed file "
                             "grows ~6%%, see docs/results.md)")
    parser.add_argument("--code-lr", type=float, default=0.05,
                        help="step size of the latent codes (FinetuneConfig.code_lr)")
    parser.add_argument("--only", default=None,
                        help="comma-separated method indices to run (0-3; default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/compress_finetune"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"shift": {"rotate": args.rotate, "noise": args.noise, "seed": args.seed},
              "subset": args.subset, "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
              "code_lr": args.code_lr}
    codes = [c for c in args.code_layers.split(",") if c]
    jobs = [
        {"name": "dense (fp32 original, all parameters)", "kind": "dense",
         "packed": str(args.dense)},
        {"name": "compressed: scales+biases", "kind": "compressed", "packed": str(args.packed),
         "out": str(args.out / "ft_scales.sppk")},
        {"name": f"compressed: scales+biases+codes({','.join(codes)})", "kind": "compressed",
         "packed": str(args.packed), "out": str(args.out / "ft_codes.sppk"), "code_layers": codes},
        {"name": "decoded compressed, dense fine-tuning", "kind": "dense",
         "packed": str(args.packed)},
    ]
    if args.only:
        jobs = [jobs[int(i)] for i in args.only.split(",")]
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for job in jobs:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(run_method, ({**common, **job},)))
        print(rows[-1], flush=True)
    dense = [r for r in rows if r["method"].startswith("dense (fp32")]
    dense_gain = dense[0]["acc after"] - dense[0]["acc before"] if dense else None
    for row in rows:
        gain = row["acc after"] - row["acc before"]
        row["recovery pt"] = round(100 * gain, 2)
        row["vs dense recovery"] = round(gain / dense_gain, 3) if dense_gain else None
        row["trainable % of dense"] = round(100 * row["trainable"] / row["total"], 3)
        if row["size before"]:
            row["size change %"] = round(100 * (row["size after"] / row["size before"] - 1), 3)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(format_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in rows]))


if __name__ == "__main__":
    main()
