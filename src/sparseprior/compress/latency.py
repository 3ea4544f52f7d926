"""Measured CPU latency: interleaved, repeated, median; ratios measured side by side.

On a shared, noisy machine a single timing of model A then model B is meaningless. Here every
*round* times each candidate once (``calls`` back-to-back calls, after ``warmup`` untimed ones
in the first round), the order rotating from round to round; a candidate's latency is the
median over rounds of its per-call time, and a speed-up is the median over rounds of the
per-round ratio ``t_baseline / t_candidate`` (both timed within the same round, seconds apart).
Everything runs on the calling thread with ``torch.set_num_threads(threads)``; ONNX Runtime
sessions should be created with the same thread count (see :func:`.export.ort_session`).

Baselines that do not count framework overhead as a method's gain:

* :func:`functional_chain`: the model's layers as a bare chain of ``F.linear``/``F.conv2d``/
  ``relu``/pooling calls on pre-bound tensors (BatchNorm folded into the convolution), with no
  ``nn.Module`` dispatch; ``None`` when the model is not such a chain (checked numerically);
* ``torch.compile`` of the model (slow to start: 10-30 s per model; see
  :func:`.runner.bench_packed`);
* ONNX Runtime fp32 (:func:`.export.ort_session`).

:meth:`LatencyResult.ratio_stats` gives the median and inter-quartile range of the per-round
ratios against any candidate.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    def ratio_stats(self, baseline: str) -> dict[str, tuple[float, float, float]]:
        """Per candidate ``(median, q1, q3)`` over rounds of ``t_baseline / t_candidate`` (> 1:
        the candidate is faster)."""
        if baseline not in self.times_ms:
            raise ValueError(f"baseline {baseline!r} is not one of {list(self.times_ms)}")
        base = self.times_ms[baseline]
        out = {}
        for name, times in self.times_ms.items():
            ratios = [b / t for b, t in zip(base, times, strict=True)]
            out[name] = (statistics.median(ratios), *_quartiles(ratios))
        return out

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


# --------------------------------------------------------------------------- bare baselines


def _fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d
                    ) -> tuple[Tensor, Tensor]:
    """Conv weight/bias with an eval-mode BatchNorm folded in."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    base = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), base * scale + shift


def _chain_ops(model: nn.Module) -> list[Callable[[Tensor], Tensor]] | None:
    """The leaf modules of ``model`` (in ``named_modules`` order) as functional ops, or
    ``None`` when a leaf has no functional form here."""
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    ops: list[Callable[[Tensor], Tensor]] = []
    i = 0
    while i < len(leaves):
        m = leaves[i]
        if isinstance(m, nn.Linear):
            w, b = m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()
            ops.append(lambda x, w=w, b=b: F.linear(x.flatten(1) if x.dim() > 2 else x, w, b))
        elif isinstance(m, nn.Conv2d) and not isinstance(m.padding, str):
            w = m.weight.detach().clone()
            b = None if m.bias is None else m.bias.detach().clone()
            if i + 1 < len(leaves) and isinstance(leaves[i + 1], nn.BatchNorm2d):
                w, b = _fold_batchnorm(w, b, leaves[i + 1])
                i += 1
            ops.append(lambda x, w=w, b=b, m=m: F.conv2d(x, w, b, m.stride, m.padding,
                                                         m.dilation, m.groups))
        elif isinstance(m, nn.ReLU):
            ops.append(torch.relu)
        elif isinstance(m, nn.MaxPool2d):
            ops.append(lambda x, m=m: F.max_pool2d(x, m.kernel_size, m.stride, m.padding,
                                                   m.dilation, m.ceil_mode))
        elif isinstance(m, nn.AvgPool2d):
            ops.append(lambda x, m=m: F.avg_pool2d(x, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            ops.append(lambda x, m=m: F.adaptive_avg_pool2d(x, m.output_size))
        elif isinstance(m, nn.Flatten):
            ops.append(lambda x, m=m: x.flatten(m.start_dim, m.end_dim))
        elif not isinstance(m, (nn.Dropout, nn.Identity)):
            return None
        i += 1
    return ops


@torch.no_grad()
def functional_chain(model: nn.Module, example_input: Tensor, atol: float = 1e-4
                     ) -> Callable[[Tensor], Tensor] | None:
    """``x -> logits`` as a bare chain of functional calls (see the module docstring), or
    ``None`` when ``model`` is not a plain chain of supported layers (e.g. residual blocks),
    checked by comparing outputs on ``example_input`` ``(B, *input_shape)`` within ``atol``."""
    model = model.eval()
    ops = _chain_ops(model)
    if not ops:
        return None

    def run(x: Tensor) -> Tensor:
        for op in ops:
            x = op(x)
        return x

    x = torch.randn_like(example_input)
    try:
        got, want = run(x), model(x)
    except (RuntimeError, ValueError, TypeError):
        return None
    if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=1e-4):
        return None
    return run
