"""When does the EarlyBERT search draw its ticket? The search alone, for several settings.

Runs only the search phase (gated MiniLM-L6, L1 on head and FFN coefficients, masks every
``--mask-every`` steps, early-bird FIFO test) for each setting in ``--settings`` and reports
the step of the draw (or none within ``--search-max-steps``) and the FIFO's largest mask
distance for heads and FFN neurons at every mask step (table, ``results.json`` and the plot
``fifo.png``). A training-time saving needs an early
draw (see ``benchmarks/earlybert_ticket_size.py`` for how early).

    python benchmarks/earlybert_search.py --out runs/earlybert_search \\
        --settings "coef_lr_scale=20" "coef_lr_scale=50" "coef_lr_scale=20,l1_heads=1e-3"

Each setting is ``key=value`` pairs of :class:`sparseprior.nlp.experiment.EarlyBertConfig`
(e.g. ``coef_lr_scale``, ``l1_heads``, ``l1_ffn``, ``threshold``, ``fifo_size``,
``head_ratio``, ``ffn_ratio``). Writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.results import format_table
from sparseprior.nlp.experiment import EarlyBertConfig, prepare, search_ticket
from sparseprior.nlp.model import load_tokenizer
from sparseprior.nlp.plots import plot_search_settings


def parse_setting(text: str) -> dict[str, Any]:
    """``"a=1,b=2e-3"`` -> ``{"a": 1, "b": 0.002}`` (each value read as JSON)."""
    pairs = [part.partition("=") for part in filter(None, map(str.strip, text.split(",")))]
    if any(not sep for _, sep, _ in pairs):
        raise SystemExit(f"error: setting {text!r} must be key=value pairs separated by commas")
    return {key.strip(): json.loads(value) for key, _, value in pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/earlybert_search"))
    p.add_argument("--settings", nargs="+", default=["coef_lr_scale=20"])
    p.add_argument("--max-train", type=int, default=4000)
    p.add_argument("--search-max-steps", type=int, default=150)
    p.add_argument("--mask-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the search's progress
    torch.set_num_threads(args.threads)
    base = EarlyBertConfig(max_train=args.max_train, max_eval=256, seed=args.seed,
                           search_max_steps=args.search_max_steps, mask_every=args.mask_every,
                           num_threads=args.threads, progress=False)
    prep = prepare(base, load_tokenizer(base.model))
    rows, runs = [], []
    for text in args.settings:
        config = EarlyBertConfig.from_dict({**base.to_dict(), **parse_setting(text)})
        config.validate()
        start = time.perf_counter()
        _, search, searched = search_ticket(config, prep)
        fifo = [(r["step"], r["fifo_heads"], r["fifo_ffn"]) for r in search.records
                if r.get("fifo_heads") is not None]
        runs.append({"setting": text, "drawn": search.drawn, "drawn_step": search.drawn_step,
                     "steps_run": searched["steps"], "fifo_max": fifo,
                     "seconds": time.perf_counter() - start})
        last = fifo[-1] if fifo else (None, None, None)
        rows.append({"setting": text, "drawn at step": search.drawn_step or "not drawn",
                     "steps run": searched["steps"],
                     "last FIFO max heads / FFN": f"{last[1]:.3f} / {last[2]:.3f}"
                     if fifo else "-"})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"runs": runs, "max_train": args.max_train, "seed": args.seed,
         "threshold": base.threshold, "fifo_size": base.fifo_size}, indent=1))
    plot_search_settings(args.out / "fifo.png", [r for r in runs if r["fifo_max"]],
                         base.threshold)
    print(format_table(rows))
    print(f"results and fifo.png in {args.out}")


if __name__ == "__main__":
    main()
