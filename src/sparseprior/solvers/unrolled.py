"""Unrolled (learned) ISTA solvers: LISTA, LISTA-CP, LISTA-SS, LISTA-CPSS, TiLISTA, ALISTA and
HyperLISTA.

Every solver maps measurements ``y`` (batch, m) to the list of all T layer outputs, each
(batch, n), starting from ``x_0 = 0``. ``A`` (m, n) is kept as a (non-trainable) buffer.

Layers (t = 1..T, ``eta`` = soft thresholding, ``eta_ss`` = with support selection):

* LISTA       x_t = eta(W1_t y + W2_t x_{t-1}, theta_t)           W1_t (n, m), W2_t (n, n)
* LISTA-CP    x_t = eta(x_{t-1} + W_t^T (y - A x_{t-1}), theta_t)  W_t (m, n)
* LISTA-SS    LISTA with ``eta_ss``;  LISTA-CPSS: LISTA-CP with ``eta_ss``
* TiLISTA     x_t = eta_ss(x_{t-1} + gamma_t W^T (y - A x_{t-1}), theta_t), one tied W (m, n)
* ALISTA      as TiLISTA with W the fixed analytic weight (:mod:`.analytic`): 2 scalars per layer
* HyperLISTA  ALISTA + momentum with instance-adaptive theta, beta and support selection from
              3 hyperparameters in total (see :class:`HyperLISTA`)

``theta_t`` and ``gamma_t`` are scalars. Initialisation follows Chen et al. (2018), "Theoretical
linear convergence of unfolded ISTA and its practical weights and thresholds": W1 = A^T/L,
W2 = I - A^T A/L, W_t = A/L, TiLISTA W = A with gamma_t = 1/L, and theta_t = lam/L, where
L = ||A||_2^2. Without support selection every solver therefore starts as exactly T steps of
ISTA for the LASSO weight ``lam``.

Support selection (Chen et al. 2018): in layer t the entries of the pre-activation ``z`` that are
among the top ``p_t = min(t * ss_step, ss_max)`` percent by magnitude of their sample *and*
exceed the threshold (``|z| > theta``) pass through unchanged; all other entries are soft
thresholded. "Top p percent" means the ``k = floor(p * n / 100)`` largest magnitudes (entries
tied with the k-th one are all kept). The selection is a constant for autograd (no gradient).

Layer-wise parameters: :meth:`UnrolledSolver.layer_parameters` returns the parameters a layer
introduces. Tied parameters (TiLISTA's W) belong to layer 1: the staged trainer
(:mod:`sparseprior.solvers.training`) trains them when layer 1 is added and afterwards treats
them as layer-1 parameters (learning rate decayed by ``layer_decay ** (t - 1)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sparseprior.common.checkpoint import load_safetensors_checkpoint, save_safetensors_checkpoint
from sparseprior.common.device import resolve_device
from sparseprior.common.validation import as_float_tensor, check_positive_int, check_range
from sparseprior.solvers.analytic import analytic_weight
from sparseprior.solvers.classic import lipschitz_constant, soft_threshold
from sparseprior.solvers.problems import l1_phase_transition

log = logging.getLogger(__name__)

__all__ = [
    "LISTA",
    "LISTA_CP",
    "LISTA_CPSS",
    "LISTA_SS",
    "SOLVERS",
    "ALISTA",
    "HYPERLISTA_RULES",
    "MOMENTUM_RULES",
    "HyperLISTA",
    "TiLISTA",
    "UnrolledSolver",
    "build_solver",
    "marchenko_pastur_heavy_ball",
    "interference_rms",
    "load_solver",
    "save_solver",
    "shrink_ss",
    "shrink_ss_rows",
    "support_mask",
    "support_percent",
]


# --------------------------------------------------------------------------------------------
# Support selection
# --------------------------------------------------------------------------------------------
def support_percent(layer: int, step: float = 1.2, max_percent: float = 13.0) -> float:
    """p_t = min(t * step, max_percent): percentage of entries trusted in layer ``t`` (1-based)."""
    return min(layer * step, max_percent)


def support_mask(z: torch.Tensor, theta: torch.Tensor | float, percent: float) -> torch.Tensor:
    """Boolean mask (batch, n) of entries that skip shrinkage.

    An entry is selected when it is among the ``k = floor(percent * n / 100)`` largest
    magnitudes of its row *and* its magnitude exceeds ``theta`` (entries tied with the k-th
    largest magnitude are all kept). Computed on detached values.
    """
    return _shrink_weights(z, theta, percent) == 0


def _shrink_weights(z: torch.Tensor, theta: torch.Tensor | float, percent: float
                    ) -> torch.Tensor:
    """Detached float weights (batch, n): 0 for the selected entries, 1 for the others.

    Float arithmetic only: on CPU, comparisons producing bool tensors and ``torch.where`` cost
    3-15x more than float element-wise ops, and this runs in every layer.
    """
    with torch.no_grad():
        mag = z.detach().abs()
        n = mag.shape[-1]
        k = min(n, int(math.floor(percent * n / 100.0 + 1e-6)))  # 1e-6: 3 * 1.2 -> 3.5999...
        if k == 0:
            return torch.ones_like(mag)
        theta_t = torch.as_tensor(theta.detach() if isinstance(theta, torch.Tensor) else theta,
                                  dtype=mag.dtype, device=mag.device)
        # Selected <=> |z| >= cut, with cut = the k-th largest |z| of the row if that exceeds
        # theta, else the next float above theta.
        above_theta = torch.nextafter(theta_t, torch.tensor(math.inf, dtype=mag.dtype,
                                                             device=mag.device))
        if k == n:
            cut = above_theta.expand(mag.shape[:-1])
        else:
            kth = _kth_largest(mag, k).to(mag.device)
            cut = torch.maximum(kth, above_theta)
        # sign(cut - |z|) is 1 below the cut, 0 or -1 at/above it.
        return (cut.unsqueeze(-1) - mag).sign_().clamp_(min=0.0)


def _kth_largest(mag: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row of ``mag`` (rows, n) -> (rows,).

    On CPU ``numpy.partition`` is 5-10x faster than ``torch.topk`` (which dominated the forward
    pass of the support-selection solvers); elsewhere ``torch.topk``.
    """
    n = mag.shape[-1]
    if mag.device.type == "cpu" and mag.dtype in (torch.float32, torch.float64):
        kth = np.partition(mag.numpy(), n - k, axis=-1)[..., n - k]
        return torch.from_numpy(np.ascontiguousarray(kth))
    return torch.topk(mag, k, dim=-1, sorted=False).values.min(dim=-1).values


def shrink_ss(z: torch.Tensor, theta: torch.Tensor | float, percent: float) -> torch.Tensor:
    """eta_ss: selected entries (see :func:`support_mask`) pass through, the rest are soft
    thresholded by ``theta``. z: (batch, n) -> (batch, n).

    Written as a soft threshold whose threshold is 0 on the selected entries (cheaper on CPU
    than ``torch.where``): their output is exactly z and their gradient w.r.t. theta is 0.
    """
    return soft_threshold(z, theta * _shrink_weights(z, theta, percent))


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
def _check_matrix(A: Any) -> torch.Tensor:
    """Validate a sensing matrix: 2-D, real, finite, not all zeros -> float32 (m, n)."""
    A = as_float_tensor(A, "A", ndim=2, dtype=A.dtype if isinstance(A, torch.Tensor)
                        and A.dtype.is_floating_point else torch.float32)
    if A.numel() == 0:
        raise ValueError(f"A must be a non-empty (m, n) matrix, got shape {tuple(A.shape)}")
    if not bool(A.abs().sum() > 0):
        raise ValueError("A is all zeros; a sensing matrix needs a positive spectral norm")
    return A.detach().clone()


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(float(value), dtype=torch.float32))


class UnrolledSolver(nn.Module):
    """Base class of the unrolled solvers.

    Subclasses set :attr:`name` and :attr:`default_support_selection`, create their per-layer
    parameters in ``self.layers[t - 1]`` (an ``nn.ParameterDict``) and tied parameters in
    ``self.shared``, and implement :meth:`preactivation` (and :meth:`threshold` if theta_t is
    not ``self.layers[t - 1]["theta"]``). Solvers that need more state than ``x_{t-1}`` (e.g.
    momentum) override :meth:`forward`. Subclasses with extra constructor arguments add them to
    :attr:`config`: :func:`load_solver` passes its entries back as keyword arguments.

    Args:
        A: (m, n) sensing matrix (stored as a buffer, float32).
        num_layers: T >= 1.
        lam: LASSO weight used for the initial thresholds lam / L.
        support_selection: use ``eta_ss`` (None: the class default).
        ss_step, ss_max: support-selection percentages p_t = min(t * ss_step, ss_max).
    """

    name: ClassVar[str] = "unrolled"
    default_support_selection: ClassVar[bool] = False
    #: Layer t reads only x_{t-1} and y (:meth:`step`); False for solvers with momentum.
    markov: ClassVar[bool] = True

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4, *,
                 support_selection: bool | None = None, ss_step: float = 1.2,
                 ss_max: float = 13.0) -> None:
        super().__init__()
        A = _check_matrix(A).float()
        check_positive_int(num_layers, "num_layers")
        check_range(float(lam), "lam", 0.0)
        if not math.isfinite(float(lam)):
            raise ValueError(f"lam must be finite, got {lam!r}")
        check_range(float(ss_step), "ss_step", 0.0, 100.0, low_inclusive=False)
        check_range(float(ss_max), "ss_max", 0.0, 100.0, low_inclusive=False)
        self.register_buffer("A", A.contiguous())
        self.num_layers = int(num_layers)
        self.lam = float(lam)
        self.support_selection = (self.default_support_selection if support_selection is None
                                  else bool(support_selection))
        self.ss_step = float(ss_step)
        self.ss_max = float(ss_max)
        self.L = lipschitz_constant(A)
        self.layers = nn.ModuleList([nn.ParameterDict() for _ in range(self.num_layers)])
        self.shared = nn.ParameterDict()

    # -- sizes and bookkeeping ----------------------------------------------------------------
    @property
    def m(self) -> int:
        return int(self.A.shape[0])

    @property
    def n(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_params(self) -> int:
        """Number of trainable scalars (tied parameters counted once; A is not counted)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description used by checkpoints to rebuild the solver."""
        return {"name": self.name, "m": self.m, "n": self.n, "num_layers": self.num_layers,
                "lam": self.lam, "support_selection": self.support_selection,
                "ss_step": self.ss_step, "ss_max": self.ss_max}

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Fill in constructor arguments that older checkpoints did not store (identity)."""
        return config

    @classmethod
    def for_problem(cls, problem: Any, **kwargs: Any) -> UnrolledSolver:
        """The solver for ``problem`` (a :class:`~sparseprior.solvers.problems.
        SparseRecoveryProblem`): built on its A, plus what the class reads from its
        description (:meth:`problem_options`). ``kwargs`` go to the constructor."""
        return cls(problem.A, **{**cls.problem_options(problem.config), **kwargs})

    @classmethod
    def problem_options(cls, config: Any) -> dict[str, Any]:
        """Constructor arguments taken from a problem's config (none by default)."""
        return {}

    def layer_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters introduced by layer ``t`` (1-based); tied (shared) ones belong to layer 1."""
        self._check_layer(t)
        params = list(self.layers[t - 1].values())
        if t == 1:
            params = list(self.shared.values()) + params
        return params

    def _check_layer(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= self.num_layers:
            raise ValueError(f"layer must be an integer in [1, {self.num_layers}], got {t!r}")

    # -- the iteration ------------------------------------------------------------------------
    def ss_percent(self, t: int) -> float:
        """Support-selection percentage p_t of layer ``t`` (1-based)."""
        return support_percent(t, self.ss_step, self.ss_max)

    def shrink(self, z: torch.Tensor, theta: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s shrinkage of z (batch, n): eta, or eta_ss with support selection."""
        if self.support_selection:
            return shrink_ss(z, theta, self.ss_percent(layer))
        return soft_threshold(z, theta)

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y - A x: (batch, m)."""
        return y - x @ self.A.T

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Layer t's input to the shrinkage, from x_{t-1} (batch, n) and y (batch, m)."""
        raise NotImplementedError

    def threshold(self, t: int) -> torch.Tensor:
        """Layer t's threshold theta_t."""
        return self.layers[t - 1]["theta"]

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One layer: x_t = shrink(preactivation_t(x_{t-1}, y), theta_t)."""
        return self.shrink(self.preactivation(t, x, y), self.threshold(t), t)

    def check_input(self, y: torch.Tensor) -> torch.Tensor:
        """Cheap checks on y: a floating (batch, m) tensor with finite values."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of shape (batch, {self.m}), "
                            f"got {type(y).__name__}")
        if y.ndim != 2 or y.shape[1] != self.m:
            raise ValueError(f"y must have shape (batch, m={self.m}), got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN/inf values; clean the measurements first")
        return y.to(dtype=self.A.dtype, device=self.A.device)

    def forward(self, y: torch.Tensor, num_layers: int | None = None) -> list[torch.Tensor]:
        """Run the first ``num_layers`` layers (default all) from x_0 = 0.

        y: (batch, m). Returns [x_1, ..., x_T], each (batch, n).
        """
        y = self.check_input(y)
        T = self.num_layers if num_layers is None else num_layers
        self._check_layer(T)
        x = y.new_zeros(y.shape[0], self.n)
        outputs = []
        for t in range(1, T + 1):
            x = self.step(t, x, y)
            outputs.append(x)
        return outputs

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, m={self.m}, n={self.n}, num_layers={self.num_layers}, "
                f"lam={self.lam}, support_selection={self.support_selection}, "
                f"n_params={self.n_params}")


# --------------------------------------------------------------------------------------------
# The solvers
# --------------------------------------------------------------------------------------------
class LISTA(UnrolledSolver):
    """Untied LISTA: x_t = eta(W1_t y + W2_t x_{t-1}, theta_t).

    Layer 1 has no W2 (x_0 = 0 makes it dead), so layer 1 holds W1_1 (n, m) and theta_1, and
    layers t >= 2 hold W1_t (n, m), W2_t (n, n), theta_t.
    """

    name = "LISTA"

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4,
                 **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        W1 = self.A.T / self.L
        W2 = torch.eye(self.n) - W1 @ self.A
        for t, layer in enumerate(self.layers, start=1):
            layer["W1"] = nn.Parameter(W1.clone())
            if t > 1:
                layer["W2"] = nn.Parameter(W2.clone())
            layer["theta"] = _scalar(self.lam / self.L)

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        layer = self.layers[t - 1]
        z = y @ layer["W1"].T
        return z if t == 1 else z + x @ layer["W2"].T


class LISTA_SS(LISTA):
    """LISTA with support selection."""

    name = "LISTA-SS"
    default_support_selection = True


class LISTA_CP(UnrolledSolver):
    """LISTA with coupled weights: x_t = eta(x_{t-1} + W_t^T (y - A x_{t-1}), theta_t).

    Each layer holds W_t (m, n) and theta_t."""

    name = "LISTA-CP"

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4,
                 **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        for layer in self.layers:
            layer["W"] = nn.Parameter(self.A / self.L)
            layer["theta"] = _scalar(self.lam / self.L)

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x, y) @ self.layers[t - 1]["W"]


class LISTA_CPSS(LISTA_CP):
    """LISTA-CP with support selection (Chen et al. 2018)."""

    name = "LISTA-CPSS"
    default_support_selection = True


class TiLISTA(UnrolledSolver):
    """Tied LISTA (Liu et al. 2019, ALISTA paper):
    x_t = eta_ss(x_{t-1} + gamma_t W^T (y - A x_{t-1}), theta_t) with one W (m, n) for all
    layers (a layer-1 parameter) and scalar gamma_t, theta_t per layer."""

    name = "TiLISTA"
    default_support_selection = True

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4,
                 **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        self.shared["W"] = nn.Parameter(self.A.clone())
        for layer in self.layers:
            layer["gamma"] = _scalar(1.0 / self.L)
            layer["theta"] = _scalar(self.lam / self.L)

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.layers[t - 1]["gamma"] * (self.residual(x, y) @ self.shared["W"])


class ALISTA(UnrolledSolver):
    """Analytic LISTA (Liu et al. 2019):
    x_t = eta_ss(x_{t-1} + gamma_t W^T (y - A x_{t-1}), theta_t) with the fixed analytic W of
    :func:`~sparseprior.solvers.analytic.analytic_weight` (a buffer, recomputed from A on
    load, not saved) and only gamma_t, theta_t trained: 2 scalars per layer.

    Initialisation: gamma_t = 1/||W^T A||_2 and theta_t = lam * gamma_t (an ISTA-like start).
    """

    name = "ALISTA"
    default_support_selection = True

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4,
                 **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        self.register_buffer("W", analytic_weight(self.A), persistent=False)
        gamma = 1.0 / float(torch.linalg.matrix_norm(self.W.double().T @ self.A.double(),
                                                     ord=2))
        for layer in self.layers:
            layer["gamma"] = _scalar(gamma)
            layer["theta"] = _scalar(self.lam * gamma)

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.layers[t - 1]["gamma"] * (self.residual(x, y) @ self.W)


def shrink_ss_rows(z: torch.Tensor, theta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """eta_ss with a per-sample threshold and selection size.

    z: (batch, n); theta: (batch, 1) thresholds, or (batch, n) per entry; k: (batch,) integer
    counts in [0, n]. In row b the entries among the ``k[b]`` largest magnitudes that also
    exceed their threshold pass through unchanged; the rest are soft thresholded.
    """
    with torch.no_grad():
        mag = z.detach().abs()
        above = torch.nextafter(theta.detach(), torch.full_like(theta, math.inf))
        weights = (torch.maximum(_selection_cut(mag, theta.detach(), k), above) - mag)
        weights = weights.sign_().clamp_(min=0.0)
    return soft_threshold(z, theta * weights)


def _selection_cut(mag: torch.Tensor, theta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the cut of :func:`shrink_ss_rows` (batch, 1): the ``k``-th largest of ``mag``
    where that decides anything, else +inf (k = 0: nothing selected) or 0 (everything above
    theta). A row with k at least its count of entries above its smallest threshold keeps
    them all, so only the other rows need a ``topk``, and only of their largest such k."""
    n = mag.shape[-1]
    k = k.long().clamp(0, n).unsqueeze(-1)
    cut = torch.where(k > 0, torch.zeros_like(mag[..., :1]), torch.full_like(mag[..., :1],
                                                                           math.inf))
    count = (mag > theta.amin(dim=-1, keepdim=True)).sum(dim=-1, keepdim=True)
    rows = ((k > 0) & (k < count)).squeeze(-1).nonzero().squeeze(-1)
    if rows.numel():
        k_rows = k[rows]
        top = mag[rows].topk(int(k_rows.max()), dim=-1, sorted=True).values
        cut = cut.index_put((rows,), top.gather(-1, k_rows - 1))
    return cut


def _column_ratio(W: torch.Tensor, P: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """``d`` (n,) with ``W = P diag(d)`` when every column of W is a multiple of P's (to
    ``rtol``), else an empty tensor. ALISTA's closed-form W is ``(A A^T)^+ A / scale`` and
    ``A^+ = A^T (A A^T)^+``, so ``W = (A^+)^T diag(1 / scale)``."""
    W64, P64 = W.double(), P.double()
    norms = P64.pow(2).sum(dim=0)
    if bool((norms <= 0).any()):
        return W.new_zeros(0)
    d = (W64 * P64).sum(dim=0) / norms
    if float((W64 - P64 * d).norm()) > rtol * float(W64.norm()):
        return W.new_zeros(0)
    return d.to(W.dtype)


def interference_rms(W: torch.Tensor, A: torch.Tensor) -> float:
    """mu_2(W, A) = sqrt(mean_{i != j} (w_i^T a_j)^2): the RMS cross-talk of W^T A.

    For an error e = x - x*, entry i of W^T A e off the support is a sum of cross-talk terms
    with standard deviation about mu_2 ||e||_2: the "noise" a threshold has to remove.
    """
    G = W.double().T @ A.double()
    n = G.shape[0]
    if n < 2:
        return 1.0
    off = G.pow(2).sum() - torch.diagonal(G).pow(2).sum()
    return float((off / (n * (n - 1))).sqrt())


def _scale_free_scales(A: torch.Tensor, W: torch.Tensor) -> tuple[float, float]:
    """(theta scale, beta scale) of the scale-free rule.

    theta: u = ||A^+ r||_1 = ||P e||_1 (P: projection on A's row space) is about
    sqrt(2 m / pi) ||e||_2 for a generic error e, so mu_2 sqrt(pi / (2 m)) u estimates the
    cross-talk RMS mu_2 ||e||_2 and c_theta is a multiple of it, whatever n, m, p or the scale
    of y. beta: 1/m, so beta_t = c_beta ||x_t||_0 / m depends on the ratio of the current
    support size to the number of measurements, not on n.
    """
    m = A.shape[0]
    return interference_rms(W, A) * math.sqrt(math.pi / (2.0 * m)), 1.0 / m


def _legacy_scales(A: torch.Tensor, W: torch.Tensor) -> tuple[float, float]:
    """(1, 1): theta_t = c_theta ||A^+ r||_1 and beta_t = c_beta ||x_t||_0 (checkpoints saved
    before the scale-free rule; the setting does not transfer across n, m)."""
    return 1.0, 1.0


#: HyperLISTA's rules: name -> function (A, W) -> (theta scale, beta scale).
HYPERLISTA_RULES: dict[str, Any] = {"scale-free": _scale_free_scales,
                                    "legacy": _legacy_scales}


def marchenko_pastur_heavy_ball(support: torch.Tensor, m: int, n: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, beta*) of the heavy-ball iteration that contracts fastest on a support of size s
    (any shape, float), when W_S^T A_S has the Marchenko-Pastur spectrum of a Gaussian A
    (m, n) with ALISTA's W: eigenvalues in [lo, hi], sqrt(lo), sqrt(hi) = sqrt(1 - rho) -/+
    sqrt(rho (1 - delta) / delta) with rho = s / n, delta = m / n (Polyak: step
    4 / (sqrt(lo) + sqrt(hi))^2, beta* = ((sqrt(hi) - sqrt(lo)) / (sqrt(hi) + sqrt(lo)))^2,
    contraction sqrt(beta*) per layer). s = 0 gives (1, 0); beta* -> 1 as s approaches m."""
    delta = m / n
    rho = (support / n).clamp(0.0, 1.0)
    a, b = torch.sqrt(1.0 - rho), torch.sqrt(rho * ((1.0 - delta) / delta))
    lo, hi = (a - b).clamp_min(0.0), a + b      # square roots of the spectrum's edges
    return 4.0 / (lo + hi).square(), ((hi - lo) / (hi + lo)).square()


#: HyperLISTA's momentum rules: "linear" (the paper's), beta_t = c_beta s_beta ||x_t||_0 at
#: step 1; "marchenko-pastur", step and beta_t / c_beta from
#: :func:`marchenko_pastur_heavy_ball` of ||x_t||_0.
MOMENTUM_RULES = ("linear", "marchenko-pastur")


#: Binomial standard deviations above p n at which the phase-transition rule counts k.
SPARSITY_Z = 3.0
#: Exponent of the phase-transition rule.
SPARSITY_EXPONENT = 0.25


def _phase_transition_factor(m: int, n: int, p: float) -> float:
    """min(r, 1)^-1/4 with r = k / (m rho*(m/n)), k = p n + 3 sqrt(n p (1-p)): 1 at and
    beyond the l1 phase transition rho* (so c_theta means the same with and without p),
    larger for problems far inside it. k counts three binomial standard deviations above its
    mean, as a small problem's hardest samples have that many non-zeros. Chosen on the seed-1
    validation sets of the transfer family (132 problems, n 200-1000, p 0.02-0.15;
    ``benchmarks/solvers_threshold_rule.py``)."""
    k = p * n + SPARSITY_Z * math.sqrt(n * p * (1.0 - p))
    r = k / (m * l1_phase_transition(m / n))
    return min(r, 1.0) ** -SPARSITY_EXPONENT


#: Undersampling ratio m/n at which the "phase-transition-delta" rule equals
#: "phase-transition".
UNDERSAMPLING_REFERENCE = 0.45
#: Exponent b of that rule's undersampling factor (m/n / UNDERSAMPLING_REFERENCE)^b.
UNDERSAMPLING_EXPONENT = 0.2


def _phase_transition_delta_factor(m: int, n: int, p: float) -> float:
    """The phase-transition factor times (delta / 0.45)^0.2, delta = m/n (15 % more from m/n
    0.3 to 0.6). Fitted on the seed-1 validation sets with c_theta unchanged: 1 of 132 problems
    more than 3 dB behind per-problem calibration, against 4 without the factor
    (``benchmarks/solvers_threshold_rule.py --with-undersampling``). Not the default: on the
    seed-0 test grid (n 200 / 500) it gains nothing (mean change 0.01 dB, 94 / 96 within 3 dB
    either way) and loses 7-12 dB on some problems far inside the transition at m/n 0.3
    (docs/solvers.md)."""
    delta = m / n
    return (_phase_transition_factor(m, n, p)
            * (delta / UNDERSAMPLING_REFERENCE) ** UNDERSAMPLING_EXPONENT)


def _rho_factor(m: int, n: int, p: float) -> float:
    """sqrt(ln(1/rho) / ln 4), rho = p n / m (the rule of the first p-aware release)."""
    return math.sqrt(math.log(m / (p * n)) / math.log(4.0))


#: How HyperLISTA's threshold scales with the prior's sparsity p when p is given.
SPARSITY_RULES: dict[str, Callable[[int, int, float], float]] = {
    "phase-transition-delta": _phase_transition_delta_factor,
    "phase-transition": _phase_transition_factor, "rho": _rho_factor}


def _check_sparsity(p: float, m: int, n: int) -> float:
    """p as a float in (0, 1) with p n < m (fewer expected non-zeros than measurements)."""
    p = float(p)
    if not (math.isfinite(p) and 0.0 < p < 1.0):
        raise ValueError(f"p (expected fraction of non-zeros of x) must be in (0, 1), got {p!r}")
    if p * n >= m:
        raise ValueError(f"p = {p:g} means {p * n:g} expected non-zeros for m = {m} "
                         f"measurements: sparse recovery needs p n < m")
    return p


def _noise_level(snr_db: float | None, noise_std: float | None
                 ) -> tuple[float | None, float | None]:
    """Validated (snr_db, noise_std) of a HyperLISTA: at most one given, finite, std >= 0."""
    if snr_db is not None and noise_std is not None:
        raise ValueError("give the noise level as snr_db or as noise_std, not both")
    if snr_db is not None and not math.isfinite(float(snr_db)):
        raise ValueError(f"snr_db must be a finite number of dB (None: noiseless), got {snr_db!r}")
    if noise_std is not None and not (math.isfinite(float(noise_std)) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite standard deviation >= 0 (None: "
                         f"noiseless), got {noise_std!r}")
    return (None if snr_db is None else float(snr_db),
            None if noise_std is None else float(noise_std))


class HyperLISTA(UnrolledSolver):
    """HyperLISTA (Chen, Liu, Wang & Yin, NeurIPS 2021): ALISTA with momentum whose
    per-layer quantities are computed from the current iterate of each sample, from exactly
    three hyperparameters (c_beta, c_theta, c_ss):

    * r_t = y - A x_t, u_t = ||A^+ r_t||_1 (per sample), u_0 = ||A^+ y||_1;
    * threshold theta_t = c_theta * g * gamma * max(s_theta(A) u_t, sigma ||w_i||_2):
      c_theta times the larger of the cross-talk estimate and, when the noise level is given
      (``snr_db`` or ``noise_std``), the standard deviation sigma ||w_i|| that measurement
      noise of standard deviation sigma leaves in entry i of W^T r (per entry, per sample);
      g >= 1 comes from the expected sparsity ``p`` when it is given (``sparsity_rule``,
      :data:`SPARSITY_RULES`: higher thresholds far inside the l1 phase transition, g = 1 at
      and beyond it), else g = 1;
    * momentum beta_t = c_beta * s_beta(A) * ||x_t||_0 at step a_t = 1 (``momentum="linear"``,
      the paper's), or the step a_t and c_beta times the momentum of the heavy-ball iteration
      that is optimal for a support of ||x_t||_0 entries under the Marchenko-Pastur spectrum
      of a Gaussian A (``"marchenko-pastur"``, :func:`marchenko_pastur_heavy_ball`; its own
      defaults, :attr:`MOMENTUM_DEFAULTS`); theta_t is scaled by a_t like the step;
    * support-selection ratio p_t = clip(c_ss * log(u_0 / u_t), 0, 1): the top
      floor(p_t * n) entries by magnitude that exceed theta_t skip the shrinkage;
    * x_{t+1} = eta_ss(x_t + a_t gamma W^T r_t, theta_t, p_t) + beta_t (x_t - x_{t-1}).

    The scales (s_theta, s_beta) come from ``rule`` (:data:`HYPERLISTA_RULES`). The default
    "scale-free" rule is the paper's mu(A)-style normalisation in an average-case form:
    s_theta = mu_2(W, A) sqrt(pi / 2m) (so theta_t is c_theta times an estimate of the RMS
    cross-talk left in W^T A (x_t - x*), see :func:`_scale_free_scales`) and s_beta = 1/m. The
    rule is invariant to n, m, p and the scale of y, so one setting transfers across problem
    sizes; "legacy" (s = 1) is the earlier un-normalised rule, kept to load old checkpoints.

    W is ALISTA's analytic weight and gamma = 1 (W^T A has a unit diagonal); A^+ is the
    pseudo-inverse. Inference reads only y (and the noise level and sparsity p, properties
    of the problem like A, when given: :meth:`for_problem` passes both); nothing here depends
    on x*. The three
    hyperparameters are ``nn.Parameter`` s (``n_params == 3``) so they can be tuned
    (:mod:`sparseprior.solvers.tuning`, :meth:`calibrate`) or trained by backpropagation; the
    support-selection count is not differentiated through.
    """

    name = "HyperLISTA"
    default_support_selection = True
    markov = False
    HYPERPARAMETERS: ClassVar[tuple[str, ...]] = ("c_beta", "c_theta", "c_ss")
    #: The shipped setting of the scale-free rule, chosen over a family of problem sizes and
    #: sparsities (``hyperlista_tuned.json`` holds it with the command that chose it).
    DEFAULTS: ClassVar[dict[str, float]] = {"c_beta": 1.25, "c_theta": 3.46, "c_ss": 3.0}
    #: The sparsity rule :attr:`DEFAULTS` were chosen with.
    DEFAULT_SPARSITY_RULE: ClassVar[str] = "phase-transition"
    #: Defaults per momentum rule (``momentum="linear"``: :attr:`DEFAULTS`).
    MOMENTUM_DEFAULTS: ClassVar[dict[str, dict[str, float]]] = {
        "linear": DEFAULTS,
        "marchenko-pastur": {"c_beta": 1.25, "c_theta": 3.46, "c_ss": 3.0},
    }

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4, *,
                 c_beta: float | None = None, c_theta: float | None = None,
                 c_ss: float | None = None, gamma: float = 1.0, rule: str = "scale-free",
                 snr_db: float | None = None, noise_std: float | None = None,
                 p: float | None = None, sparsity_rule: str | None = None,
                 momentum: str = "linear", **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        if momentum not in MOMENTUM_RULES:
            raise ValueError(f"momentum must be one of {list(MOMENTUM_RULES)}, got {momentum!r}")
        self.momentum = momentum
        self.snr_db, self.noise_std = _noise_level(snr_db, noise_std)
        self.p = None if p is None else _check_sparsity(p, self.m, self.n)
        sparsity_rule = self.DEFAULT_SPARSITY_RULE if sparsity_rule is None else sparsity_rule
        if sparsity_rule not in SPARSITY_RULES:
            raise ValueError(f"sparsity_rule must be one of {sorted(SPARSITY_RULES)}, "
                             f"got {sparsity_rule!r}")
        self.sparsity_rule = sparsity_rule
        if rule not in HYPERLISTA_RULES:
            raise ValueError(f"rule must be one of {sorted(HYPERLISTA_RULES)}, got {rule!r}")
        given = {"c_beta": c_beta, "c_theta": c_theta, "c_ss": c_ss}
        for key, value in given.items():
            value = self.MOMENTUM_DEFAULTS[momentum][key] if value is None else float(value)
            if not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number (>= 0 in practice), "
                                 f"got {value!r}")
            self.shared[key] = _scalar(value)
        check_range(float(gamma), "gamma", 0.0, low_inclusive=False)
        self.gamma = float(gamma)
        self.rule = rule
        self.register_buffer("W", analytic_weight(self.A), persistent=False)
        pinv = torch.linalg.pinv(self.A.double()).float()          # (n, m)
        self.register_buffer("A_pinv_T", pinv.T.contiguous(), persistent=False)  # (m, n)
        self.register_buffer("w_per_pinv", _column_ratio(self.W, self.A_pinv_T),
                             persistent=False)
        self.register_buffer("w_norms", self.W.norm(dim=0), persistent=False)   # (n,)
        self.theta_scale, self.beta_scale = HYPERLISTA_RULES[rule](self.A, self.W)

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints written before ``rule`` existed used the legacy rule; those written
        before ``sparsity_rule`` existed, the "rho" sparsity rule."""
        return {"rule": "legacy", "sparsity_rule": "rho", "momentum": "linear", **config}

    @classmethod
    def problem_options(cls, config: Any) -> dict[str, Any]:
        """The problem's noise level (``snr_db``, None when noiseless) and sparsity ``p``
        (left out, with a warning, when p n >= m: no sparse recovery to adapt to)."""
        rho = config.p * config.n / config.m
        if rho >= 1.0:
            log.warning("HyperLISTA: p n / m = %.3g >= 1; thresholds ignore the sparsity", rho)
        return {"snr_db": config.snr_db, "p": config.p if rho < 1.0 else None}

    @property
    def sparsity_factor(self) -> float:
        """g, the factor the threshold gets from the prior's sparsity p (1 when p is not
        given): :data:`SPARSITY_RULES` [``sparsity_rule``] of (m, n, p). The default
        "phase-transition" rule raises the thresholds of problems far inside the l1 phase
        transition (g = 1 at and beyond it); "phase-transition-delta" also scales them by
        (m/n / 0.45)^0.2."""
        if self.p is None:
            return 1.0
        return float(SPARSITY_RULES[self.sparsity_rule](self.m, self.n, self.p))

    def noise_floor(self, y: torch.Tensor) -> torch.Tensor | None:
        """gamma sigma_b ||w_i||_2 (batch, n): the standard deviation measurement noise leaves
        in each entry of gamma W^T r; None when no noise level was given. With ``snr_db``,
        sigma_b = ||y_b|| / sqrt(m (10^(snr/10) + 1)) (the SNR of each sample relative to its
        ||A x||, as :class:`~sparseprior.solvers.problems.SparseRecoveryProblem` draws it);
        with ``noise_std``, sigma_b = noise_std."""
        if self.snr_db is not None:
            sigma = y.norm(dim=1, keepdim=True) / math.sqrt(self.m * (10.0 ** (self.snr_db / 10.0)
                                                                     + 1.0))
        elif self.noise_std is not None:
            sigma = y.new_full((y.shape[0], 1), self.noise_std)
        else:
            return None
        return (self.gamma * sigma) * self.w_norms

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The three hyperparameters as plain floats."""
        return {k: float(self.shared[k].detach()) for k in self.HYPERPARAMETERS}

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "gamma": self.gamma, "rule": self.rule,
                "snr_db": self.snr_db, "noise_std": self.noise_std, "p": self.p,
                "sparsity_rule": self.sparsity_rule, "momentum": self.momentum,
                **self.hyperparameters}

    def layer_parameters(self, t: int) -> list[nn.Parameter]:
        self._check_layer(t)
        return list(self.shared.values()) if t == 1 else []

    def forward(self, y: torch.Tensor, num_layers: int | None = None) -> list[torch.Tensor]:
        """[x_1, ..., x_T] (each (batch, n)) from y (batch, m); x_0 = x_{-1} = 0."""
        y = self.check_input(y)
        T = self.num_layers if num_layers is None else num_layers
        self._check_layer(T)
        if not torch.is_grad_enabled():
            return self._forward_inference(y, T)
        c_beta, c_theta, c_ss = (self.shared[k] for k in self.HYPERPARAMETERS)
        tiny = torch.finfo(y.dtype).tiny
        floor = self.noise_floor(y)
        x = x_prev = y.new_zeros(y.shape[0], self.n)
        u0 = (y @ self.A_pinv_T).abs().sum(dim=1).clamp_min(tiny)
        outputs = []
        for _ in range(T):
            r = self.residual(x, y)
            u = (r @ self.A_pinv_T).abs().sum(dim=1).clamp_min(tiny)
            theta = (c_theta * self.sparsity_factor) * self._spread(u, floor)
            with torch.no_grad():
                ratio = (c_ss.detach() * torch.log(u0 / u)).clamp(0.0, 1.0)
                k = torch.floor(ratio * self.n + 1e-6)
                count = (x.detach() != 0).sum(dim=1, keepdim=True).to(y.dtype)
            step, beta_base = self.heavy_ball(count)
            beta = c_beta * beta_base
            if step is None:
                z = x + self.gamma * (r @ self.W)
            else:
                z, theta = x + (self.gamma * step) * (r @ self.W), theta * step
            x, x_prev = shrink_ss_rows(z, theta, k) + beta * (x - x_prev), x
            outputs.append(x)
        return outputs

    def heavy_ball(self, support: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(a_t, beta_t / c_beta) from the support sizes ||x_t||_0 (batch, 1): (None, i.e.
        a_t = 1, s_beta ||x_t||_0) for "linear", :func:`marchenko_pastur_heavy_ball` else."""
        if self.momentum == "linear":
            return None, self.beta_scale * support
        return marchenko_pastur_heavy_ball(support, self.m, self.n)

    def _spread(self, u: torch.Tensor, floor: torch.Tensor | None) -> torch.Tensor:
        """What theta_t is c_theta times: gamma s_theta u_t (batch, 1), or its maximum with the
        noise floor (batch, n)."""
        spread = (self.gamma * self.theta_scale) * u.unsqueeze(1)
        return spread if floor is None else torch.maximum(spread, floor)

    def _forward_inference(self, y: torch.Tensor, T: int) -> list[torch.Tensor]:
        """:meth:`forward` without autograd, in fewer passes over memory: one matmul for the
        residual (``addmm``) and one for ``A^+ r`` (the closed-form analytic W is
        ``A^+T diag(d)``, so ``W^T r = d * A^+ r``; else ``[A^+ | W]`` in one); plain soft or hard
        thresholding when no row, or every row, selects its whole support. Same values as
        the autograd path up to float rounding (``tests/test_hyperlista.py``)."""
        n = self.n
        shared_mm = self.w_per_pinv.numel() == n  # W = A^+T diag(d): one matmul gives both
        c_theta = float(self.shared["c_theta"]) * self.sparsity_factor
        c_beta = float(self.shared["c_beta"])
        c_ss = float(self.shared["c_ss"])
        tiny = torch.finfo(y.dtype).tiny
        floor = self.noise_floor(y)
        pinv_w = self.A_pinv_T if shared_mm else torch.cat([self.A_pinv_T, self.gamma * self.W],
                                                           dim=1)  # (m, n) or (m, 2n)
        step = self.gamma * self.w_per_pinv
        minus_at = -self.A.T.contiguous()
        x = x_prev = y.new_zeros(y.shape[0], n)
        work = torch.empty_like(x)    # scratch: large fresh tensors cost page faults per layer
        u0 = torch.abs(y @ self.A_pinv_T).sum(dim=1).clamp_min(tiny)
        outputs = []
        for _ in range(T):
            q = torch.addmm(y, x, minus_at) @ pinv_w  # r = y - A x, then A^+ r (| gamma W^T r)
            u = torch.abs(q[:, :n], out=work).sum(dim=1).clamp_min(tiny)
            theta = c_theta * self._spread(u, floor)
            k = torch.floor((c_ss * torch.log(u0 / u)).clamp(0.0, 1.0) * n + 1e-6)
            support = torch.sign(x, out=work).abs_().sum(dim=1, keepdim=True)  # ||x||_0
            hb_step, beta = self.heavy_ball(support)
            beta = c_beta * beta
            z = q.mul_(step) if shared_mm else q[:, n:]                   # in place, in q
            if hb_step is not None:
                z.mul_(hb_step)
                theta = theta * hb_step
            z.add_(x)
            if bool((k <= 0).all()):          # soft threshold: sign(z) max(|z| - theta, 0)
                torch.abs(z, out=work).sub_(theta).clamp_min_(0.0)
                shrunk, work = work.copysign_(z), z
            elif bool((k >= n).all()):        # every entry above theta passes unchanged
                shrunk = z.mul_(torch.abs(z, out=work).gt_(theta))
            else:
                shrunk = shrink_ss_rows(z, theta, k)
            x, x_prev = shrunk.addcmul_(beta, x).addcmul_(beta, x_prev, value=-1.0), x
            outputs.append(x)
        return outputs

    @classmethod
    def calibrate(cls, A: torch.Tensor, *, p: float = 0.1, snr_db: float | None = None,
                  num_layers: int = 16, **kwargs: Any) -> HyperLISTA:
        """A HyperLISTA for ``A`` with its 3 hyperparameters tuned on samples drawn from the
        prior (Bernoulli(p)-Gaussian x*, noise at ``snr_db``), never on the user's data.

        A grid search around the shipped setting (see
        :func:`sparseprior.solvers.tuning.calibrate_hyperlista` for the budget, given in
        evaluations, and ``kwargs``); the search record is in ``model.calibration``.
        """
        from sparseprior.solvers.tuning import calibrate_hyperlista

        return calibrate_hyperlista(A, p=p, snr_db=snr_db, num_layers=num_layers, **kwargs)

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v:.4g}" for k, v in self.hyperparameters.items())
        return f"{super().extra_repr()}, rule={self.rule!r}, {hp}"


SOLVERS: dict[str, type[UnrolledSolver]] = {
    "LISTA": LISTA,
    "LISTA-CP": LISTA_CP,
    "LISTA-SS": LISTA_SS,
    "LISTA-CPSS": LISTA_CPSS,
    "TiLISTA": TiLISTA,
    "ALISTA": ALISTA,
    "HyperLISTA": HyperLISTA,
}


def build_solver(name: str, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4,
                 **kwargs: Any) -> UnrolledSolver:
    """Build solver ``name`` (a key of :data:`SOLVERS`) for A (m, n), initialised from A.

    Extra keyword arguments (``support_selection``, ``ss_step``, ``ss_max``) go to the class.
    Raises ``ValueError`` for an unknown name, ``num_layers < 1`` or a bad A.
    """
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](A, num_layers, lam, **kwargs)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_solver(model: UnrolledSolver, path: str | Path, meta: dict[str, Any] | None = None
                ) -> Path:
    """Save ``model`` (parameters and A) as ``<path>.safetensors`` + ``<path>.json``.

    The checkpoint kind is ``"solver/<name>"``. Returns the ``.safetensors`` path.
    """
    if not isinstance(model, UnrolledSolver):
        raise TypeError(f"model must be an UnrolledSolver, got {type(model).__name__}")
    return save_safetensors_checkpoint(path, dict(model.state_dict()), model.config,
                                       kind=f"solver/{model.name}", meta=meta)


def load_solver(path: str | Path, A: torch.Tensor | None = None,
                device: str | torch.device = "cpu") -> UnrolledSolver:
    """Load a solver saved by :func:`save_solver`.

    A: optional (m, n) matrix of the problem to use it on; it must have the stored (m, n)
    (``ValueError`` otherwise) and replaces the stored A (a warning is logged if it differs).
    """
    dev = resolve_device(device)
    tensors, header = load_safetensors_checkpoint(path, kind="solver")
    cfg = dict(header["config"])
    name = cfg.pop("name", None)
    if name not in SOLVERS:
        raise ValueError(f"checkpoint {str(path)!r} holds unknown solver {name!r}; "
                         f"known: {sorted(SOLVERS)}")
    stored_A = tensors["A"]
    m, n = cfg.pop("m"), cfg.pop("n")
    if A is not None:
        A = _check_matrix(A).float()
        if tuple(A.shape) != (m, n):
            raise ValueError(f"checkpoint {str(path)!r} was trained for (m, n) = ({m}, {n}) "
                             f"but the given A has (m, n) = {tuple(A.shape)}")
        if not torch.allclose(A.cpu(), stored_A.cpu(), rtol=1e-5, atol=1e-6):
            log.warning("load_solver: the given A differs from the one the solver was "
                        "trained with; using the given A")
        tensors["A"] = A
    model = SOLVERS[name](tensors["A"], **SOLVERS[name].upgrade_config(cfg))
    model.load_state_dict(tensors)
    return model.to(dev)
