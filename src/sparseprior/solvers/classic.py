"""Classic solvers for the LASSO ``min_x 0.5 ||A x - y||^2 + lam ||x||_1``, batched in torch.

ISTA and FISTA use the step 1/L, L = ||A||_2^2. Both run on whatever device ``A``/``y`` live on.
``support_oracle_ls`` is least squares on the true support: the accuracy floor for noisy problems.
"""

from __future__ import annotations

import dataclasses

import torch

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


def _check_inputs(A: torch.Tensor, y: torch.Tensor, lam: float, max_iter: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    A = as_float_tensor(A, "A", ndim=2, dtype=A.dtype if A.dtype.is_floating_point
                        else torch.float32)
    y = as_float_tensor(y, "y", dtype=A.dtype)
    if y.ndim == 1:
        y = y.unsqueeze(0)
    if y.ndim != 2 or y.shape[1] != A.shape[0]:
        raise ValueError(f"y must have shape (batch, m={A.shape[0]}), got {tuple(y.shape)}")
    check_range(lam, "lam", 0.0)
    check_positive_int(max_iter, "max_iter")
    return A, y.to(A.device)


def _run(A: torch.Tensor, y: torch.Tensor, lam: float, *, momentum: bool, max_iter: int,
         tol: float, x_true: torch.Tensor | None, return_iterates: bool,
         track_objective: bool, step: float | None,
         continuation: float | None = None) -> ClassicResult:
    A, y = _check_inputs(A, y, lam, max_iter)
    L = lipschitz_constant(A) if step is None else 1.0 / step
    if continuation is not None:
        check_range(continuation, "continuation", 0.0, 1.0, low_inclusive=False,
                    high_inclusive=False)
        lam_k = max(float((y @ A).abs().max()), lam)   # above it, x = 0 is the solution
    else:
        lam_k = lam
    At = A.T.contiguous()
    x = torch.zeros(y.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
    z, t = x, 1.0
    iterates: list[torch.Tensor] | None = [] if return_iterates else None
    errors: list[torch.Tensor] | None = [] if x_true is not None else None
    objective: list[float] | None = [] if track_objective else None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        grad = (z @ At - y) @ A
        x_new = soft_threshold(z - grad / L, lam_k / L)
        if continuation is not None:
            lam_k = max(lam, lam_k * continuation)
        if momentum:
            t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            z = x_new + ((t - 1.0) / t_new) * (x_new - x)
            t = t_new
        else:
            z = x_new
        change = (x_new - x).norm() / x.norm().clamp_min(1e-12)
        x = x_new
        if iterates is not None:
            iterates.append(x)
        if errors is not None:   # kept on the device: no host sync per iteration
            errors.append((x.double() - x_true.double()).pow(2).sum())
        if objective is not None:
            objective.append(float(lasso_objective(A, y, x, lam).mean()))
        if tol > 0 and n_iter > 1 and float(change) < tol:
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
         track_objective: bool = False, step: float | None = None) -> ClassicResult:
    """ISTA: x_{k+1} = eta(x_k - A^T(A x_k - y)/L, lam/L), from x_0 = 0.

    Args:
        A: (m, n) sensing matrix. y: (batch, m) measurements.
        lam: LASSO weight (>= 0). max_iter: iteration cap. tol: stop when the relative change
            ||x_{k+1} - x_k|| / ||x_k|| over the batch falls below it (0 = run to the cap).
        x_true: (batch, n) ground truth, to record NMSE(dB) per iteration.
        step: step size (default 1/L).
    """
    return _run(A, y, lam, momentum=False, max_iter=max_iter, tol=tol, x_true=x_true,
                return_iterates=return_iterates, track_objective=track_objective, step=step)


def fista(A: torch.Tensor, y: torch.Tensor, lam: float, *, max_iter: int = 1000,
          tol: float = 0.0, x_true: torch.Tensor | None = None, return_iterates: bool = False,
          track_objective: bool = False, step: float | None = None,
          continuation: float | None = None) -> ClassicResult:
    """FISTA (Beck & Teboulle): ISTA with Nesterov momentum t_{k+1} = (1 + sqrt(1 + 4 t_k^2))/2.

    Same arguments as :func:`ista`, plus ``continuation``: a factor in (0, 1); the LASSO weight
    starts at max|A^T y| (over the batch) and is multiplied by it after every iteration until
    it reaches ``lam`` (a homotopy that speeds up small-lambda solves); None: fixed ``lam``.
    """
    return _run(A, y, lam, momentum=True, max_iter=max_iter, tol=tol, x_true=x_true,
                return_iterates=return_iterates, track_objective=track_objective, step=step,
                continuation=continuation)


def support_oracle_ls(A: torch.Tensor, y: torch.Tensor, x_true: torch.Tensor,
                      chunk: int = 128) -> torch.Tensor:
    """Least squares restricted to the true support of each sample: (batch, n).

    Solves min ||A_S x_S - y||^2 per sample, batched as the n x n system
    (D A^T A D + (I - D)) x = D A^T y with D = diag(support), in chunks of ``chunk`` samples.
    """
    A, y = _check_inputs(A, y, 0.0, 1)
    x_true = as_float_tensor(x_true, "x_true", ndim=2, dtype=A.dtype).to(A.device)
    if x_true.shape != (y.shape[0], A.shape[1]):
        raise ValueError(f"x_true must have shape (batch, n) = ({y.shape[0]}, {A.shape[1]}), "
                         f"got {tuple(x_true.shape)}")
    gram = (A.T @ A).double()
    aty = (y @ A).double()
    out = []
    for start in range(0, y.shape[0], chunk):
        s = (x_true[start:start + chunk] != 0).double()
        M = s.unsqueeze(2) * gram * s.unsqueeze(1) + torch.diag_embed(1.0 - s)
        out.append(torch.linalg.solve(M, (s * aty[start:start + chunk]).unsqueeze(2)).squeeze(2))
    return torch.cat(out).to(A.dtype)
