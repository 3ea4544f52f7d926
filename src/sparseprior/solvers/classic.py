"""Classic solvers for the LASSO ``min_x 0.5 ||A x - y||^2 + lam ||x||_1``, batched in torch.

ISTA and FISTA use the step 1/L, L = ||A||_2^2. Both run on whatever device ``A``/``y`` live on.
Refits of an estimate on a support (debias, the support oracle) live in :mod:`.refit`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sparseprior.common.registry import Registry
from sparseprior.common.validation import as_float_tensor, check_positive_int, check_range


def soft_threshold(x: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """eta(x, theta) = sign(x) max(|x| - theta, 0)."""
    return torch.sign(x) * torch.clamp(x.abs() - theta, min=0.0)


def lasso_objective(A: torch.Tensor, y: torch.Tensor, x: torch.Tensor, lam: float
                    ) -> torch.Tensor:
    """Per-sample LASSO objective (batch,) for x (batch, n), y (batch, m)."""
    return 0.5 * (x @ A.T - y).pow(2).sum(dim=1) + lam * x.abs().sum(dim=1)


def lipschitz_constant(A: torch.Tensor) -> float:
    """L = ||A||_2^2 (largest singular value squared)."""
    return float(torch.linalg.matrix_norm(A.double(), ord=2) ** 2)


@dataclasses.dataclass
class ClassicResult:
    """Output of ISTA/FISTA.

    x: final estimate (batch, n); n_iter: iterations run; iterates: every iterate (when asked),
    nmse_db: NMSE(dB) after each iteration (when ``x_true`` given); objective: mean LASSO
    objective after each iteration (when asked).
    """

    x: torch.Tensor
    n_iter: int
    iterates: list[torch.Tensor] | None = None
    nmse_db: list[float] | None = None
    objective: list[float] | None = None


def check_system(A: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (m, n) and y (batch, m) (a (m,) y becomes one row) as float tensors on A's device,
    checked (finite, matching m)."""
    A = as_float_tensor(A, "A", ndim=2, dtype=A.dtype if A.dtype.is_floating_point
                        else torch.float32)
    y = as_float_tensor(y, "y", dtype=A.dtype)
    if y.ndim == 1:
        y = y.unsqueeze(0)
    if y.ndim != 2 or y.shape[1] != A.shape[0]:
        raise ValueError(f"y must have shape (batch, m={A.shape[0]}), got {tuple(y.shape)}")
    return A, y.to(A.device)


def _check_inputs(A: torch.Tensor, y: torch.Tensor, lam: float, max_iter: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    check_range(lam, "lam", 0.0)
    check_positive_int(max_iter, "max_iter")
    return check_system(A, y)


class _GradientStep:
    """The forward step v = z - A^T (A z - y) / L, as cheap as the shapes allow.

    Gram form (n <= 2m): one fused ``addmm`` per iteration, v = b + z M with the precomputed
    M = I - A^T A / L (n, n) and b = A^T y / L (batch, n): n^2 multiply-adds per sample.
    Factored form (n > 2m): two fused ``addmm`` s, r = z A^T - y, then v = z - r A / L:
    2 m n per sample, cheaper than n^2 there. Precomputations run in float64 and are cast back.
    """

    def __init__(self, A: torch.Tensor, y: torch.Tensor, L: float) -> None:
        m, n = A.shape
        self.gram = n <= 2 * m
        A64 = A.double()
        if self.gram:
            M = torch.eye(n, dtype=torch.float64, device=A.device) - (A64.T @ A64) / L
            self.M = M.to(A.dtype)
            self.b = ((y.double() @ A64) / L).to(A.dtype)
        else:
            self.At = A.T.contiguous()
            self.A = A.contiguous()
            self.neg_y = -y
            self.inv_L = 1.0 / L

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.gram:
            return torch.addmm(self.b, z, self.M)
        r = torch.addmm(self.neg_y, z, self.At)
        return torch.addmm(z, r, self.A, alpha=-self.inv_L)


def _shrink(v: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Soft thresholding: one fused kernel for a scalar threshold, clamp form for (batch, 1)."""
    if isinstance(theta, torch.Tensor):
        return v - torch.clamp(v, -theta, theta)
    return F.softshrink(v, theta) if theta > 0 else v


class _Thresholds:
    """theta_k = lam_k / L per iteration; with continuation lam_k = max(lam, lam_0 c^k) per
    sample (lam_0 = max|A^T y| of the sample, above which x = 0 is the LASSO solution).

    Returns a (batch, 1) tensor while some sample is still above ``lam`` and the plain float
    lam / L afterwards, so the continuation costs nothing once it has finished.
    """

    def __init__(self, A: torch.Tensor, y: torch.Tensor, lam: float, L: float,
                 continuation: float | None) -> None:
        self.final = lam / L
        self.factor = continuation
        self.switch = 0
        if continuation is not None:
            check_range(continuation, "continuation", 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False)
            lam0 = (y @ A).abs().amax(dim=1, keepdim=True).clamp_min(lam)   # (batch, 1)
            self.theta0 = lam0 / L
            top = float(lam0.max())                                         # one host sync
            if top > lam > 0:
                self.switch = math.ceil(math.log(lam / top) / math.log(continuation))
            elif lam == 0:
                raise ValueError("continuation needs lam > 0 (the floor of the schedule)")

    def __call__(self, k: int) -> float | torch.Tensor:
        """Threshold of iteration k (0-based)."""
        if k >= self.switch:
            return self.final
        return (self.theta0 * self.factor ** k).clamp_min(self.final)


def _run(A: torch.Tensor, y: torch.Tensor, lam: float, *, momentum: bool, max_iter: int,
         tol: float, x_true: torch.Tensor | None, return_iterates: bool,
         track_objective: bool, step: float | None,
         continuation: float | None = None, restart: bool = False) -> ClassicResult:
    A, y = _check_inputs(A, y, lam, max_iter)
    L = lipschitz_constant(A) if step is None else 1.0 / step
    forward = _GradientStep(A, y, L)
    thresholds = _Thresholds(A, y, lam, L, continuation)
    x = torch.zeros(y.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
    z, t = x, 1.0
    t_rows = torch.ones(y.shape[0], 1, dtype=A.dtype, device=A.device) if restart else None
    iterates: list[torch.Tensor] | None = [] if return_iterates else None
    errors: list[torch.Tensor] | None = [] if x_true is not None else None
    objective: list[float] | None = [] if track_objective else None
    x_true_d = None if x_true is None else x_true.to(device=A.device, dtype=torch.float64)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        x_new = _shrink(forward(z), thresholds(n_iter - 1))
        if t_rows is not None:
            # O'Donoghue & Candes (2015) gradient restart, per sample: reset the momentum of a
            # sample when the step x_new - x points against the generalised gradient z - x_new.
            stalls = ((z - x_new) * (x_new - x)).sum(dim=1, keepdim=True) > 0
            t_rows = torch.where(stalls, torch.ones_like(t_rows), t_rows)
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t_rows * t_rows))
            z = torch.lerp(x, x_new, 1.0 + (t_rows - 1.0) / t_next)
            t_rows = t_next
        elif momentum:
            t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            z = torch.lerp(x, x_new, 1.0 + (t - 1.0) / t_new)   # x_new + (t-1)/t_new (x_new-x)
            t = t_new
        else:
            z = x_new
        stop = (tol > 0 and n_iter > 1
                and float((x_new - x).norm() / x.norm().clamp_min(1e-12)) < tol)
        x = x_new
        if iterates is not None:
            iterates.append(x)
        if errors is not None:   # kept on the device: no host sync per iteration
            errors.append((x.double() - x_true_d).pow(2).sum())
        if objective is not None:
            objective.append(float(lasso_objective(A, y, x, lam).mean()))
        if stop:
            break
    nmse = None if errors is None else _nmse_trace(errors, x_true)
    return ClassicResult(x, n_iter, iterates, nmse, objective)


def _nmse_trace(errors: list[torch.Tensor], x_true: torch.Tensor) -> list[float]:
    """NMSE(dB) per iteration from the squared errors (same definition as ``nmse_db``)."""
    ref = float(x_true.double().pow(2).sum())
    if ref == 0.0:
        raise ValueError("x_true is all zeros; NMSE is undefined")
    ratio = (torch.stack(errors) / ref).clamp_min(1e-30)
    return (10.0 * torch.log10(ratio)).cpu().tolist()


def ista(A: torch.Tensor, y: torch.Tensor, lam: float, *, max_iter: int = 1000,
         tol: float = 0.0, x_true: torch.Tensor | None = None, return_iterates: bool = False,
         track_objective: bool = False, step: float | None = None,
         continuation: float | None = None) -> ClassicResult:
    """ISTA: x_{k+1} = eta(x_k - A^T(A x_k - y)/L, lam/L), from x_0 = 0.

    Args:
        A: (m, n) sensing matrix. y: (batch, m) measurements.
        lam: LASSO weight (>= 0). max_iter: iteration cap. tol: stop when the relative change
            ||x_{k+1} - x_k|| / ||x_k|| over the batch falls below it (0 = run to the cap; no
            per-iteration reduction is computed then).
        x_true: (batch, n) ground truth, to record NMSE(dB) per iteration.
        step: step size (default 1/L). continuation: see :func:`fista`.

    One iteration costs one fused matrix product (see :class:`_GradientStep`) and one soft
    threshold; traces (``x_true``, ``track_objective``) and ``tol`` add their reductions.
    """
    return _run(A, y, lam, momentum=False, max_iter=max_iter, tol=tol, x_true=x_true,
                return_iterates=return_iterates, track_objective=track_objective, step=step,
                continuation=continuation)


def fista(A: torch.Tensor, y: torch.Tensor, lam: float, *, max_iter: int = 1000,
          tol: float = 0.0, x_true: torch.Tensor | None = None, return_iterates: bool = False,
          track_objective: bool = False, step: float | None = None,
          continuation: float | None = None, restart: bool = False) -> ClassicResult:
    """FISTA (Beck & Teboulle): ISTA with Nesterov momentum t_{k+1} = (1 + sqrt(1 + 4 t_k^2))/2.

    Same arguments as :func:`ista`, plus

    * ``continuation``: a factor c in (0, 1); sample b's LASSO weight starts at
      lam_0 = max|A^T y_b| (x = 0 solves the LASSO there) and is multiplied by c every
      iteration until it reaches ``lam`` (a homotopy that speeds up small-lambda solves);
      None: fixed ``lam``.
    * ``restart``: O'Donoghue & Candes (2015) adaptive gradient restart, per sample: the
      momentum of a sample is reset (t = 1) when (z_k - x_{k+1})^T (x_{k+1} - x_k) > 0. Costs
      one reduction per iteration.

    One iteration: one fused matrix product, one soft threshold, one ``lerp`` for the momentum.
    """
    return _run(A, y, lam, momentum=True, max_iter=max_iter, tol=tol, x_true=x_true,
                return_iterates=return_iterates, track_objective=track_objective, step=step,
                continuation=continuation, restart=restart)


def fista_continuation(A: torch.Tensor, y: torch.Tensor, lam: float, *,
                       factor: float = 0.95, **kwargs: Any) -> ClassicResult:
    """FISTA with lambda-continuation (``fista(..., continuation=factor)``), a named baseline:
    per-sample lam_0 = max|A^T y|, times ``factor`` per iteration down to ``lam``."""
    return fista(A, y, lam, continuation=factor, **kwargs)


def fista_restart(A: torch.Tensor, y: torch.Tensor, lam: float, **kwargs: Any
                  ) -> ClassicResult:
    """FISTA with O'Donoghue-Candes adaptive restart (``fista(..., restart=True)``)."""
    return fista(A, y, lam, restart=True, **kwargs)


#: The classic baselines by name; each is ``solve(A, y, lam, *, max_iter, x_true, ...)``.
CLASSIC_SOLVERS: Registry[Callable[..., ClassicResult]] = Registry("classic solver")
CLASSIC_SOLVERS.register("ISTA", ista)
CLASSIC_SOLVERS.register("FISTA", fista)
CLASSIC_SOLVERS.register("FISTA-cont", fista_continuation)
CLASSIC_SOLVERS.register("FISTA-restart", fista_restart)
