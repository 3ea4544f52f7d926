"""Bayes-optimal approximate message passing (AMP) for a Bernoulli-Gaussian prior.

The reference for how well *any* estimator told the prior can do on a Gaussian A: AMP with the
posterior-mean denoiser of the prior (Donoho, Maleki & Montanari 2009/2010; its state
evolution, Bayati & Montanari 2011, tracks the Bayes-optimal MSE on i.i.d. Gaussian A in the
large-system limit). It reads y, A and the prior (p, the signal variance, the noise level),
never x*, so it is an estimator, not an oracle; unlike the support oracle its error includes
the cost of not knowing the support. AMP assumes i.i.d. Gaussian-like A with unit-norm
columns and can diverge on ill-conditioned A, where this is no reference.

    x_t = eta(x_{t-1} + A^T z_{t-1}; tau_{t-1}^2),  tau^2 = ||z||^2 / m  (per sample)
    z_t = y - A x_t + (n / m) <eta'> z_{t-1}                 (the Onsager term)

with eta the posterior mean of x_i = B_i G_i (B ~ Bernoulli(p), G ~ N(0, x_var)) observed
in Gaussian noise of variance tau^2, and eta' its derivative (the posterior variance over
tau^2).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from sparseprior.common.validation import as_float_tensor, check_positive_int, check_range

__all__ = ["AMPResult", "bayes_amp", "bernoulli_gaussian_posterior"]


@dataclasses.dataclass
class AMPResult:
    """Output of :func:`bayes_amp`.

    Attributes:
        x: final estimate (batch, n).
        n_iter: iterations run.
        nmse_db: set-level NMSE (dB) after each iteration when ``x_true`` was given, else None.
    """

    x: torch.Tensor
    n_iter: int
    nmse_db: list[float] | None


def bernoulli_gaussian_posterior(r: torch.Tensor, tau2: torch.Tensor, p: float,
                                 x_var: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and variance of x = B G given r = x + N(0, tau2).

    Args:
        r: observations (batch, n).
        tau2: noise variance per sample (batch, 1), > 0.
        p: P(B = 1) in (0, 1).
        x_var: variance of G.

    Returns:
        (mean, variance), each (batch, n). d mean / d r = variance / tau2.
    """
    v1 = x_var + tau2
    # log P(active | r) / P(inactive | r)
    llr = (math.log(p / (1.0 - p)) + 0.5 * torch.log(tau2 / v1)
           + 0.5 * r.square() * (1.0 / tau2 - 1.0 / v1))
    active = torch.sigmoid(llr)
    gain = x_var / v1
    m1 = gain * r
    mean = active * m1
    var = active * (gain * tau2 + m1.square()) - mean.square()
    return mean, var.clamp_min(0.0)


def _noise_var(y: torch.Tensor, m: int, snr_db: float | None, noise_std: float | None
               ) -> torch.Tensor:
    """Per-sample noise variance (batch, 1): from the SNR relative to ||A x|| (as
    :class:`~sparseprior.solvers.problems.SparseRecoveryProblem` draws it), the standard
    deviation, or 0."""
    if snr_db is not None:
        return y.square().sum(dim=1, keepdim=True) / (m * (10.0 ** (snr_db / 10.0) + 1.0))
    std = 0.0 if noise_std is None else float(noise_std)
    return y.new_full((y.shape[0], 1), std * std)


@torch.no_grad()
def bayes_amp(A: torch.Tensor, y: torch.Tensor, p: float, *, snr_db: float | None = None,
              noise_std: float | None = None, x_var: float = 1.0, max_iter: int = 50,
              damping: float = 0.0, x_true: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float64) -> AMPResult:
    """Bayes-optimal AMP for y = A x + noise with x Bernoulli(p)-Gaussian(0, x_var).

    Args:
        A: measurement matrix (m, n), columns of unit norm (i.i.d. Gaussian-like).
        y: measurements (batch, m).
        p: the prior's fraction of non-zeros, in (0, 1).
        snr_db / noise_std: the noise level (at most one; neither: noiseless).
        x_var: variance of the non-zero entries.
        max_iter: iterations (each: one product with A and one with A^T).
        damping: in [0, 1): x_t = (1 - damping) eta(...) + damping x_{t-1}, for stability.
        x_true: (batch, n), only to record the NMSE per iteration.
        dtype: the dtype computed in (float64: a reference down to -300 dB; float32: about
            twice as fast, floors near -140 dB).

    Returns:
        :class:`AMPResult`, returned in A's dtype (float32 for non-tensor input).
    """
    out_dtype = A.dtype if isinstance(A, torch.Tensor) and A.is_floating_point() else None
    A = as_float_tensor(A, "A", ndim=2, dtype=dtype)
    y = as_float_tensor(y, "y", ndim=2, dtype=dtype).to(A.device)
    m, n = A.shape
    if y.shape[1] != m:
        raise ValueError(f"y must have shape (batch, m) = (batch, {m}), got {tuple(y.shape)}")
    check_range(float(p), "p", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_range(float(x_var), "x_var", 0.0, low_inclusive=False)
    check_range(float(damping), "damping", 0.0, 1.0, high_inclusive=False)
    check_positive_int(max_iter, "max_iter")
    if snr_db is not None and noise_std is not None:
        raise ValueError("give the noise level as snr_db or as noise_std, not both")
    Ad, yd = A, y
    sigma2 = _noise_var(yd, m, snr_db, noise_std)
    floor = torch.finfo(dtype).tiny ** 0.5
    truth = (None if x_true is None
             else as_float_tensor(x_true, "x_true", ndim=2, dtype=torch.float64).to(A.device))
    x = yd.new_zeros(y.shape[0], n)
    z, slope = yd.clone(), yd.new_zeros(y.shape[0], 1)
    trace: list[float] | None = [] if truth is not None else None
    for _ in range(max_iter):
        tau2 = (z.square().sum(dim=1, keepdim=True) / m).clamp_min(floor)
        tau2 = torch.maximum(tau2, sigma2)
        mean, var = bernoulli_gaussian_posterior(x + z @ Ad, tau2, p, x_var)
        x = mean if damping == 0.0 else torch.lerp(mean, x, damping)
        slope = (n / m) * (var / tau2).mean(dim=1, keepdim=True)
        z = yd - x @ Ad.T + slope * z
        if trace is not None:
            err = (x - truth).square().sum() / truth.square().sum().clamp_min(floor)
            trace.append(10.0 * math.log10(max(float(err), 1e-300)))
    return AMPResult(x.to(out_dtype or torch.float32), max_iter, trace)
