"""The embedded simulation engine: deterministic, in-process, resumable.

Clients run one after another in this process (each a fresh seeded local training), so a rerun
is bit-identical. After every round the engine writes a checkpoint (safetensors + JSON,
atomic; ``checkpoints/round-NNNNNN``) with the global weights, masks, strategy state and the
history; a killed run started again on the same folder continues from the last complete round
and ends with the same final model.

Run folder::

    config.json          FedRunConfig (RunDir.claim: a different experiment is refused)
    split.json           client train/test indices (seeded)
    metrics.jsonl        one record per round (bytes, faults, density, accuracy)
    checkpoints/         the last two round checkpoints (removed when finished)
    final.safetensors    final global state_dict (+ .json); masks.safetensors for sparse runs
    summary.json         final accuracy, counted sparsity, upload/download totals, faults
    accuracy_vs_rounds.png, accuracy_vs_upload.png
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.common.runs import RunDir
from sparseprior.data import DatasetSplits
from sparseprior.federated.client import ClientPlan
from sparseprior.federated.config import MACHINE_FIELDS, FedRunConfig
from sparseprior.federated.faults import CORRUPTIONS
from sparseprior.federated.federation import Federation, ReplyFn
from sparseprior.federated.splits import ClientSplit
from sparseprior.federated.strategies import ServerState
from sparseprior.sparsity import MaskSet

log = logging.getLogger(__name__)

CKPT_KIND = "fed/round"
FINAL_KIND = "fed/weights"
SUMMARY = "summary.json"
MB = 1e6


# ---------------------------------------------------------------------- checkpoints


def save_round(folder: Path, state: ServerState, history: list[dict[str, Any]],
               keep: int = 2) -> Path:
    """Checkpoint of the state after ``state.round`` rounds; the JSON is written last, so a
    round without its JSON is incomplete and ignored. Keeps the last ``keep``."""
    tensors = {f"w/{k}": v for k, v in state.weights.items()}
    tensors.update({f"m/{k}": v for k, v in (state.masks or {}).items()})
    tensors.update({f"x/{k}": v for k, v in state.extra.items()})
    path = save_safetensors_checkpoint(folder / f"round-{state.round:06d}", tensors,
                                       {"round": state.round, "sparse": state.masks is not None,
                                        "history": history}, kind=CKPT_KIND)
    done = sorted(folder.glob("round-*.json"))
    for old in done[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return path


def load_latest_round(folder: Path) -> tuple[ServerState, list[dict[str, Any]]] | None:
    """The newest complete round checkpoint in ``folder`` (``None`` if there is none)."""
    for js in sorted(folder.glob("round-*.json"), reverse=True):
        try:
            tensors, header = load_safetensors_checkpoint(js, kind=CKPT_KIND)
        except ValueError as err:
            log.warning("skipping unreadable checkpoint %s: %s", js, err)
            continue
        cfg = header["config"]
        parts: dict[str, dict[str, torch.Tensor]] = {"w": {}, "m": {}, "x": {}}
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            parts[kind][name] = value
        masks = {k: v.bool() for k, v in parts["m"].items()} if cfg["sparse"] else None
        return ServerState(int(cfg["round"]), parts["w"], masks, parts["x"]), cfg["history"]
    return None


# ---------------------------------------------------------------------- the engine


def simulated_reply(fed: Federation) -> ReplyFn:
    """In-process clients with the config's faults: a client fails (no reply) with probability
    ``fail_rate`` and sends a corrupted update with probability ``corrupt_rate`` (kind drawn
    from :data:`~sparseprior.federated.faults.CORRUPTIONS`), seeded by (seed, round, client)."""
    config = fed.config
    kinds = CORRUPTIONS.names()

    def reply(client: int, blob: bytes, plan: ClientPlan) -> bytes | None:
        rng = np.random.default_rng([int(config.seed), plan.round, client, 0xFA17])
        if rng.random() < config.fail_rate:
            return None
        update, masks = fed.train_client(client, blob, plan)
        if rng.random() < config.corrupt_rate:
            update = CORRUPTIONS.get(kinds[int(rng.integers(len(kinds)))])(update)
        return fed.upload(update, masks)

    return reply


def run_federated(
    config: FedRunConfig,
    run_dir: str | Path | None = None,
    *,
    splits: DatasetSplits | None = None,
    reply: Callable[[Federation], ReplyFn] | None = None,
    stop_after: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or read back) one federated experiment with the embedded engine.

    Args:
        config: the experiment.
        run_dir: the run folder (``None``: nothing on disk, no resume).
        splits: the dataset if already loaded.
        reply: ``fed -> reply function`` to replace the in-process clients (tests, Flower).
        stop_after: return after this many rounds *in this call*, as if killed (tests);
            the summary then has ``"finished": False``.
        progress: called with every round record.

    Returns:
        The summary (see :func:`summarize`) with the final :class:`ServerState` under
        ``"state"``; ``cached: True`` (and no state: use :func:`load_final`) when read back
        from a finished folder.
    """
    if not isinstance(config, FedRunConfig):
        raise TypeError(f"config must be a FedRunConfig, got {type(config).__name__}")
    run = RunDir(run_dir) if run_dir is not None else None
    if run is None:
        return _run(config, None, splits, reply, stop_after, progress)
    run.claim(config, may_differ=MACHINE_FIELDS, kind="federated run")
    with run.lock():
        if run.file(SUMMARY).exists():
            return {**run.read_json(SUMMARY), "cached": True}
        return _run(config, run, splits, reply, stop_after, progress)


def _run(config: FedRunConfig, run: RunDir | None, splits: DatasetSplits | None,
         reply: Callable[[Federation], ReplyFn] | None, stop_after: int | None,
         progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _loop(config, run, splits, reply, stop_after, progress)
    finally:
        torch.set_num_threads(threads)


def _load_split(run: RunDir | None) -> ClientSplit | None:
    if run is not None and run.file("split.json").exists():
        return ClientSplit.load(run.file("split.json"))
    return None


def _loop(config: FedRunConfig, run: RunDir | None, splits: DatasetSplits | None,
          reply: Callable[[Federation], ReplyFn] | None, stop_after: int | None,
          progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    start = time.perf_counter()
    fed = Federation(config, splits, _load_split(run))
    ckpt_dir = run.path / "checkpoints" if run is not None else None
    resumed = load_latest_round(ckpt_dir) if ckpt_dir is not None and ckpt_dir.exists() \
        else None
    if resumed is not None:
        state, history = resumed
        log.info("resuming %s after round %d", run.path if run else "", state.round)
    else:
        state, history = fed.initial_state(), []
    if run is not None:
        if not run.file("split.json").exists():
            fed.split.save(run.file("split.json"))
        run.write_text("metrics.jsonl", "".join(_line(r) for r in history))
    reply_fn = (reply or simulated_reply)(fed)
    done_here = 0
    while state.round < config.rounds:
        if stop_after is not None and done_here >= stop_after:
            return {"finished": False, "round": state.round}
        result = fed.run_round(state, reply_fn)
        state, record = result.state, result.record
        last = state.round == config.rounds
        if last or state.round % config.eval_every == 0:
            record.update(fed.evaluate(state))
        _accumulate(record, history)
        history.append(record)
        if run is not None:
            run.log_metrics(record)
            save_round(ckpt_dir, state, history)
        if progress is not None:
            progress(record)
        done_here += 1
    summary = summarize(config, fed, state, history, time.perf_counter() - start)
    if run is not None:
        _finish(run, fed, state, history, summary)
    summary["state"] = state
    return summary


def _line(record: dict[str, Any]) -> str:
    import json

    from sparseprior.common.runs import _jsonable

    return json.dumps(_jsonable(record)) + "\n"


def _accumulate(record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    prev = history[-1] if history else {"cum_upload_mb": 0.0, "cum_download_mb": 0.0}
    record["cum_upload_mb"] = prev["cum_upload_mb"] + record["upload_bytes"] / MB
    record["cum_download_mb"] = prev["cum_download_mb"] + record["download_bytes"] / MB


def summarize(config: FedRunConfig, fed: Federation, state: ServerState,
              history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Final accuracy, sparsity counted from the weights, bytes and fault totals."""
    evals = [h for h in history if "test_acc" in h]
    final = evals[-1] if evals else fed.evaluate(state)
    rejected: dict[str, int] = {}
    for h in history:
        for k, v in h["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    uploads = [h["upload_bytes_per_client"] for h in history if h["replied"]]
    return {
        "strategy": config.strategy, "model": config.model, "split": config.split,
        "clients": config.clients, "per_round": config.per_round, "rounds": state.round,
        "seed": config.seed, "target_sparsity": config.sparsity if fed.strategy.sparse else 0.0,
        "test_acc": final["test_acc"], "test_loss": final["test_loss"],
        "client_test_acc": final.get("client_test_acc", math.nan),
        **fed.counted(state),
        "upload_mb": history[-1]["cum_upload_mb"] if history else 0.0,
        "download_mb": history[-1]["cum_download_mb"] if history else 0.0,
        "upload_bytes_per_client_round": float(np.mean(uploads)) if uploads else 0.0,
        "failed": sum(h["failed"] for h in history), "rejected": rejected,
        "skipped_rounds": sum(bool(h["skipped"]) for h in history),
        "mask_changes": sum(bool(h["mask_changed"]) for h in history),
        "seconds": seconds, "finished": True,
    }


def _finish(run: RunDir, fed: Federation, state: ServerState, history: list[dict[str, Any]],
            summary: dict[str, Any]) -> None:
    import shutil

    from sparseprior.federated.plots import plot_runs

    meta = {"strategy": fed.config.strategy, "rounds": state.round}
    save_safetensors_checkpoint(run.file("final"), state.weights, meta, kind=FINAL_KIND)
    if state.masks is not None:
        MaskSet(state.masks).save(run.file("masks"), meta=meta)
    label = fed.config.strategy
    plot_runs({label: history}, run.path)
    run.write_json(SUMMARY, summary)
    shutil.rmtree(run.path / "checkpoints", ignore_errors=True)


def load_final(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The final global ``state_dict`` of a finished run folder."""
    tensors, _ = load_safetensors_checkpoint(Path(run_dir) / "final", kind=FINAL_KIND)
    return tensors
