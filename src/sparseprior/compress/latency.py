"""Measured CPU latency: interleaved, repeated, median; ratios measured side by side.

On a shared, noisy machine a single timing of model A then model B is meaningless. Here every
*round* times each candidate once (``calls`` back-to-back calls, after ``warmup`` untimed ones
in the first round), the order rotating from round to round; a candidate's latency is the
median over rounds of its per-call time, and a speed-up is the median over rounds of the
per-round ratio ``t_baseline / t_candidate`` (both timed within the same round, seconds apart).
Everything runs on the calling thread with ``torch.set_num_threads(threads)``; ONNX Runtime
sessions should be created with the same thread count (see :func:`.export.ort_session`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from sparseprior.common.validation import check_positive_int

Runner = Callable[[], Any]


@dataclasses.dataclass
class LatencyResult:
    """Per candidate: median milliseconds per call, the inter-quartile range over rounds,
    and (when a baseline is given) the median per-round speed-up over it."""

    median_ms: dict[str, float]
    iqr_ms: dict[str, tuple[float, float]]
    speedup: dict[str, float]
    rounds: int
    calls: int
    threads: int
    times_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def speedup_over(self, baseline: str) -> dict[str, float]:
        """Median over rounds of ``t_baseline / t_candidate`` for every candidate."""
        if baseline not in self.times_ms:
            raise ValueError(f"baseline {baseline!r} is not one of {list(self.times_ms)}")
        base = self.times_ms[baseline]
        return {n: statistics.median(b / t for b, t in zip(base, v, strict=True))
                for n, v in self.times_ms.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def measure_latency(runners: Mapping[str, Runner], *, baseline: str | None = None,
                    rounds: int = 15, calls: int = 20, warmup: int = 5, threads: int = 1
                    ) -> LatencyResult:
    """Time each zero-argument callable in ``runners`` (name -> fn), interleaved.

    Args:
        runners: name -> callable doing one inference (input already bound).
        baseline: name of the reference for :attr:`LatencyResult.speedup`.
        rounds: interleaved rounds (the statistics are over rounds).
        calls: back-to-back calls per candidate per round (the per-call time is their mean).
        warmup: untimed calls per candidate before the first round.
        threads: ``torch.set_num_threads`` during the measurement (restored afterwards).
    """
    check_positive_int(rounds, "rounds")
    check_positive_int(calls, "calls")
    check_positive_int(warmup, "warmup", allow_zero=True)
    if not runners:
        raise ValueError("runners must name at least one callable")
    if baseline is not None and baseline not in runners:
        raise ValueError(f"baseline {baseline!r} is not one of {list(runners)}")
    names = list(runners)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    runners[name]()
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    fn = runners[name]
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    times[name].append((time.perf_counter() - start) / calls * 1e3)
    finally:
        torch.set_num_threads(before)
    result = LatencyResult({n: statistics.median(v) for n, v in times.items()},
                           {n: _quartiles(v) for n, v in times.items()}, {}, rounds, calls,
                           threads, times)
    if baseline is not None:
        result.speedup = result.speedup_over(baseline)
    return result


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Runner:
    """``model(x)`` in eval mode (no autograd)."""
    model.eval()
    return lambda: model(x)
