"""Serve packed models that are not Linear chains (conv nets) with ONNX Runtime.

The Linear-chain kernels of :mod:`.serve` do not apply to convolutions, and on this kind of
CPU no sparse convolution beats mkldnn's dense one (measured in ``docs/compress_edge.md``):
a conv net's speed comes from *structure*. A packed file decodes (``unpack``) to the
compressed architecture, after channel slimming a genuinely smaller dense network; it is
exported to ONNX and run by ONNX Runtime's CPU provider (graph optimisations fold BatchNorm
into the convolutions). With ``calibration`` inputs, ONNX Runtime static QDQ int8
(:func:`.qdq.ort_static_int8`: int8 convolutions too) is a second candidate, and the faster
of the two at the requested batch size (interleaved timing, one thread) is kept::

    served = OrtServedModel.from_model(unpack("resnet20.sppk"), batch_size=64)
    served(x)               # (B, C, H, W) -> logits (B, classes)
    served.plan_rows()      # each candidate's measured ms, and which one runs

fp32 outputs match the decoded model to ~1e-5 (:meth:`OrtServedModel.check`, 1e-4 by
default). int8 outputs are approximate: the check then counts top-1 agreement with the decoded
model on the calibration inputs (``min_agreement``); measure accuracy on held-out data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparseprior.common.validation import check_positive_int

__all__ = ["OrtCandidate", "OrtServedModel"]


@dataclasses.dataclass
class OrtCandidate:
    """One way to run the decoded model: an ONNX Runtime session and whether its outputs equal
    the decoded model's up to float rounding (``exact``: fp32) or approximate them (int8)."""

    name: str
    session: Any
    exact: bool


class OrtServedModel:
    """A decoded model served by ONNX Runtime: fp32, or static int8 when it measures faster.

    Attributes:
        candidates: name (``'fp32'``, ``'int8'``) -> :class:`OrtCandidate`.
        chosen: the candidate that runs (:meth:`use` switches).
        ms: median milliseconds per call of each candidate at ``batch_size``.
        batch_size: the batch size the choice was measured at.
        reference: the decoded PyTorch model (eval mode) the outputs are checked against.
        input_shape: ``(C, H, W)`` (or ``(features,)``) of one example.
    """

    def __init__(self, candidates: dict[str, OrtCandidate], ms: dict[str, float],
                 batch_size: int, reference: nn.Module, input_shape: tuple[int, ...],
                 calibration: Tensor | None = None) -> None:
        self.candidates = candidates
        self.ms = ms
        self.batch_size = batch_size
        self.reference = reference
        self.input_shape = input_shape
        self.calibration = calibration
        self.chosen = candidates[min(ms, key=ms.__getitem__)] if len(ms) > 1 else \
            next(iter(candidates.values()))

    @property
    def kind(self) -> str:
        """Name of the candidate that runs."""
        return self.chosen.name

    def use(self, name: str) -> OrtServedModel:
        """Run candidate ``name`` from now on (e.g. force fp32); returns ``self``."""
        if name not in self.candidates:
            raise ValueError(f"no candidate {name!r}; have {sorted(self.candidates)}")
        self.chosen = self.candidates[name]
        return self

    @classmethod
    def from_model(cls, model: nn.Module, *, batch_size: int = 1,
                   calibration: Tensor | None = None, rounds: int = 15, seed: int = 0
                   ) -> OrtServedModel:
        """Export ``model`` (e.g. ``unpack(path)``) to ONNX Runtime fp32 (and static int8
        calibrated on ``calibration`` ``(N, *input_shape)`` when given) and keep the faster
        candidate at ``batch_size`` (``rounds`` interleaved rounds, one thread)."""
        from sparseprior.compress.export import deployable_copy, export_onnx, ort_session
        from sparseprior.compress.latency import measure_latency
        from sparseprior.compress.qdq import ort_static_int8

        batch_size = check_positive_int(batch_size, "batch_size")
        rounds = check_positive_int(rounds, "rounds")
        reference = deployable_copy(model).eval()
        input_shape = _input_shape(reference)
        if calibration is not None:
            calibration = _check_batch(calibration, input_shape, "calibration")
        onnx = export_onnx(reference, torch.zeros(1, *input_shape))
        candidates = {"fp32": OrtCandidate("fp32", ort_session(onnx), exact=True)}
        if calibration is not None:
            candidates["int8"] = OrtCandidate(
                "int8", ort_session(ort_static_int8(onnx, calibration)), exact=False)
        g = torch.Generator().manual_seed(seed)
        x = np.ascontiguousarray(torch.rand(batch_size, *input_shape, generator=g).numpy())
        ms = {"fp32": math.nan}
        if len(candidates) > 1:
            result = measure_latency({k: (lambda s=c.session: s.run(None, {"x": x}))
                                      for k, c in candidates.items()}, rounds=rounds,
                                     calls=max(3, 64 // batch_size), warmup=2)
            ms = dict(result.median_ms)
        return cls(candidates, ms, batch_size, reference, input_shape, calibration)

    def __call__(self, x: Tensor) -> Tensor:
        """``(B, *input_shape)`` float -> logits ``(B, classes)`` (float32, CPU)."""
        arr = _check_batch(x, self.input_shape, "x").numpy()
        return torch.from_numpy(self.chosen.session.run(None, {"x": arr})[0])

    @torch.inference_mode()
    def check(self, x: Tensor | None = None, *, atol: float = 1e-4,
              min_agreement: float = 0.95, seed: int = 0) -> float:
        """Largest ``|served(x) - decoded(x)|``; ``ValueError`` when an exact (fp32) candidate
        is above ``atol``, or an approximate (int8) one's top-1 agreement with the decoded
        model falls below ``min_agreement`` (default ``x``: the calibration inputs for int8,
        else 64 uniform [0, 1) inputs)."""
        exact = self.chosen.exact
        if x is None:
            x = self.calibration if not exact else \
                torch.rand(64, *self.input_shape, generator=torch.Generator().manual_seed(seed))
        ref, got = self.reference(x), self(x)
        diff = float((got - ref).abs().max())
        if exact and (not math.isfinite(diff) or diff > atol):
            raise ValueError(f"served outputs differ from the decoded model by {diff:.3g} "
                             f"(> atol={atol})")
        if not exact:
            agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
            if agree < min_agreement:
                raise ValueError(f"{self.kind} top-1 agrees with the decoded model on "
                                 f"{agree:.1%} of the check inputs (< {min_agreement:.0%})")
        return diff

    def plan_rows(self) -> list[dict[str, Any]]:
        """One row per candidate: measured ms at ``batch_size`` and whether it runs."""
        return [{"candidate": f"ONNX Runtime {k}", "batch": self.batch_size,
                 "ms": "" if math.isnan(v) else round(v, 4), "chosen": k == self.kind}
                for k, v in self.ms.items()]

    def speed_report(self, x: Tensor | None = None, *, rounds: int = 50, seed: int = 0
                     ) -> dict[str, Any]:
        """Served vs the decoded model in PyTorch eager at ``batch_size`` (default ``x``:
        uniform [0, 1) inputs), one thread, interleaved (see :func:`.serve.speed_summary`)."""
        from sparseprior.compress.latency import measure_latency
        from sparseprior.compress.serve import speed_summary

        if x is None:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(self.batch_size, *self.input_shape, generator=g)
        x = _check_batch(x, self.input_shape, "x")
        base = "decoded model (PyTorch)"

        def eager() -> Tensor:
            with torch.inference_mode():
                return self.reference(x)

        lat = measure_latency({"served": lambda: self(x), base: eager},
                              rounds=check_positive_int(rounds, "rounds"),
                              calls=max(3, 64 // len(x)), warmup=3)
        return speed_summary(lat, base, base, len(x), rounds)


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{type(model).__name__} does not say its input_shape; serve a "
                         f"registry model (sparseprior.models)")
    return tuple(int(s) for s in shape)


def _check_batch(x: Any, shape: tuple[int, ...], name: str) -> Tensor:
    """``x`` as a contiguous float32 CPU tensor ``(B, *shape)``; one-line errors otherwise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {shape}), got "
                        f"{type(x).__name__}")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, {', '.join(map(str, shape))}), got "
                         f"{tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x.detach().to("cpu", torch.float32).contiguous()
