"""How slim must an EarlyBERT ticket be for a training-time saving? Step-time ratios measured.

For each (head ratio, FFN ratio) the slim MiniLM-L6 (that fraction of heads removed in every
layer, that fraction of FFN neurons removed in every layer) and the full model train on the
same real tweet batches (batch 32, max length 64, dynamic padding, one thread), timed in
interleaved rounds (forward + backward + AdamW step). From the median per-round ratio ``r``
(full / slim) the saving of EarlyBERT over full fine-tuning for ``F`` fine-tuning steps and a
ticket drawn after ``s`` search steps (each a full-model step) is ``1 - s / F - 1 / r``; the
table prints the latest draw step that still saves ``--target`` percent.

    python benchmarks/earlybert_ticket_size.py --out runs/earlybert_ticket_size

Writes ``results.json``. Only the structure matters here (the weights are the pre-trained
ones, sliced); whether a ticket of that size keeps the accuracy is what
``benchmarks/earlybert.py --head-ratio R --ffn-ratio R`` measures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseprior.common.results import format_table
from sparseprior.engine.optim import fused_option
from sparseprior.nlp.experiment import EarlyBertConfig, prepare
from sparseprior.nlp.model import TextClassifier, encoder_layer_params, load_encoder, load_tokenizer
from sparseprior.nlp.slim import slim_, structure_masks

GRID = ((1 / 3, 0.4), (1 / 3, 0.5), (0.5, 0.5), (0.5, 0.6), (7 / 12, 0.7))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict, y: torch.Tensor
               ) -> float:
    start = time.perf_counter()
    F.cross_entropy(model(batch), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def step_ratio(slim: torch.nn.Module, full: torch.nn.Module, batches: list, rounds: int
               ) -> dict[str, float]:
    """Median per-round ``t_full / t_slim`` of one training step, interleaved."""
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-5, **fused_option(m.parameters()))
            for m in (slim, full)]
    slim.train(), full.train()
    t_slim, t_full = [], []
    for i in range(rounds + 1):
        batch, y = batches[i % len(batches)]
        a = train_step(full, opts[1], batch, y)
        b = train_step(slim, opts[0], batch, y)
        if i:  # the first round warms up
            t_full.append(a), t_slim.append(b)
    ratios = [f / s for f, s in zip(t_full, t_slim, strict=True)]
    q = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "full_s": statistics.median(t_full), "slim_s": statistics.median(t_slim)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/earlybert_ticket_size"))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--finetune-steps", type=int, default=580,
                   help="F: fine-tuning steps (580 = one epoch of the 18.5k training tweets)")
    p.add_argument("--target", type=float, default=35.0, help="saving to reach, percent")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    cfg = EarlyBertConfig(max_train=32 * 8, max_eval=32)
    prep = prepare(cfg, load_tokenizer(cfg.model))
    batches = [({"input_ids": prep.train.input_ids[i:i + 32],
                 "attention_mask": prep.train.attention_mask[i:i + 32]},
                prep.train.labels[i:i + 32]) for i in range(0, 32 * 8, 32)]
    torch.manual_seed(0)
    full = TextClassifier(load_encoder(cfg.model), 2)
    heads, neurons = 12, full.encoder.config.intermediate_size
    rows = []
    for head_ratio, ffn_ratio in GRID:
        kept_heads = heads - round(head_ratio * heads)
        kept_ffn = neurons - round(ffn_ratio * neurons)
        masks = structure_masks([kept_heads] * 6, [kept_ffn] * 6, heads, neurons)
        slim = slim_(TextClassifier(load_encoder(cfg.model), 2), *masks)
        timing = step_ratio(slim, full, batches, args.rounds)
        r = timing["ratio"]
        latest = math.floor(args.finetune_steps * (1 - args.target / 100 - 1 / r))
        rows.append({"heads removed": f"{kept_heads}/{heads} kept", "FFN removed %":
                     round(100 * ffn_ratio), "encoder params -%": round(
                         100 * (1 - encoder_layer_params(slim) / encoder_layer_params(full)),
                         1),
                     "step ratio": round(r, 2), "IQR": f"{timing['q1']:.2f}-{timing['q3']:.2f}",
                     "saving if free search %": round(100 * (1 - 1 / r), 1),
                     f"latest draw for {args.target:g}%": latest if latest > 0 else "never"})
        del slim
    result = {"rows": rows, "finetune_steps": args.finetune_steps, "target_pct": args.target,
              "rounds": args.rounds, "batch": 32, "threads": 1,
              "seconds": round(time.time() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(format_table(rows))
    print(f"F = {args.finetune_steps} fine-tuning steps; {result['seconds']} s; "
          f"results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
