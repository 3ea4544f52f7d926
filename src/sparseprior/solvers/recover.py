"""Sparse recovery on a user's own A and measurements: read the arrays, recover x, write it.

:func:`recover` runs a trained solver, a HyperLISTA calibrated for A on prior samples (no x*
needed), or the shipped HyperLISTA told the prior's p and SNR, optionally followed by
:func:`~sparseprior.solvers.classic.debias`. :func:`read_array` / :func:`write_array` read
and write ``.npy``/``.npz``/``.safetensors`` without unpickling anything.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from sparseprior.common.checkpoint import atomic_write_bytes
from sparseprior.common.config import Config
from sparseprior.common.device import resolve_device
from sparseprior.common.validation import as_float_tensor, check_positive_int, check_range
from sparseprior.solvers.refit import bayes_refit
from sparseprior.solvers.refit import debias as debias_estimate
from sparseprior.solvers.unrolled import MOMENTUM_RULES, HyperLISTA, UnrolledSolver

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")


def _one_array(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key in arrays:
        return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(f"{str(path)!r} holds arrays {sorted(arrays)}: name one {key!r} or keep "
                     "a single array in the file")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return dict(load_file(str(path)))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, SafetensorError) as err:
        raise ValueError(f"{str(path)!r} is not a readable {path.suffix} array file "
                         f"({type(err).__name__}: {err})") from None


def read_array(path: str | Path, key: str, *, ndim: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """The float array in ``path`` as a float32 tensor.

    ``.npy`` (pickled object arrays refused), or ``.npz``/``.safetensors`` holding one array or
    an array named ``key``. Its rank must be one of ``ndim`` and its values finite; every
    problem is a one-line ``ValueError`` naming the file.
    """
    path = Path(path)
    if path.suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{str(path)!r}: unknown array format {path.suffix!r}; use one of "
                         f"{', '.join(ARRAY_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist")
    array = _one_array(_load_arrays(path), key, path)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{str(path)!r}: {key} must hold real numbers, got dtype {array.dtype}")
    if array.ndim not in ndim:
        raise ValueError(f"{str(path)!r}: {key} must have {' or '.join(map(str, ndim))} "
                         f"dimensions, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{str(path)!r}: {key} holds NaN/inf values; clean it first")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def write_array(path: str | Path, array: torch.Tensor, key: str = "x") -> Path:
    """Write ``array`` atomically as ``.npy``, or under ``key`` in ``.npz``/``.safetensors``."""
    from safetensors.numpy import save

    path = Path(path)
    if path.suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{str(path)!r}: unknown array format {path.suffix!r}; use one of "
                         f"{', '.join(ARRAY_SUFFIXES)}")
    data = np.ascontiguousarray(array.detach().cpu().numpy())
    if path.suffix == ".safetensors":
        return atomic_write_bytes(path, save({key: data}))
    buffer = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buffer, data, allow_pickle=False)
    else:
        np.savez(buffer, **{key: data})
    return atomic_write_bytes(path, buffer.getvalue())


@dataclasses.dataclass
class RecoveryConfig(Config):
    """How :func:`recover` builds its solver when none is given (a HyperLISTA for A).

    Attributes:
        p: the prior's fraction of non-zeros in x (None: HyperLISTA blind to it; calibration
            then assumes 0.1).
        snr_db: measurement SNR in dB (None: noiseless).
        calibrate: tune the 3 hyperparameters for A on prior samples first (seconds to a
            minute on one thread) instead of the shipped setting.
        num_layers: HyperLISTA layers.
        debias: refit least squares on the support found (any solver).
        bayes_refit: refit noisy estimates with :func:`~sparseprior.solvers.refit.bayes_refit`
            instead (widened support, least squares, posterior-mean shrinkage); needs p and
            snr_db, which then describe the prior for a given solver too.
        seed: seed of the calibration's prior samples.
        momentum: HyperLISTA's momentum rule (:data:`~sparseprior.solvers.unrolled.
            MOMENTUM_RULES`): "linear" (the paper's) or "marchenko-pastur" (deeper on
            well-posed Gaussian problems, see docs/solvers.md "Momentum rules").
    """

    p: float | None = None
    snr_db: float | None = None
    calibrate: bool = False
    num_layers: int = 16
    debias: bool = False
    bayes_refit: bool = False
    seed: int = 0
    momentum: str = "linear"

    def validate(self) -> None:
        if self.p is not None:
            check_range(self.p, "p", 0.0, 1.0, low_inclusive=False)
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be a finite number of dB or None, got {self.snr_db}")
        check_positive_int(self.num_layers, "num_layers")
        if self.momentum not in MOMENTUM_RULES:
            raise ValueError(f"momentum must be one of {list(MOMENTUM_RULES)}, got "
                             f"{self.momentum!r}")
        if self.bayes_refit and (self.p is None or self.snr_db is None):
            raise ValueError("bayes_refit needs the prior: give p (fraction of non-zeros) and "
                             "snr_db (measurement SNR in dB)")
        if self.bayes_refit and self.debias:
            raise ValueError("choose one refit: debias (least squares) or bayes_refit (which "
                             "includes least squares)")

    @property
    def builds_solver(self) -> bool:
        """Whether fields that describe a solver to build are set (not the refits, nor p and
        snr_db when bayes_refit uses them as the prior)."""
        refit_only = {"debias": False, "bayes_refit": False}
        if self.bayes_refit:
            refit_only.update(p=None, snr_db=None)
        return self.replace(**refit_only) != RecoveryConfig()


@dataclasses.dataclass
class Recovery:
    """What :func:`recover` found.

    x: (batch, n) estimates; residual: (batch,) ||A x - y|| / ||y||; support: (batch,) number
    of non-zeros; seconds: wall time of the solver (and refit), calibration excluded;
    debiased / bayes_refit: which refit ran.
    """

    x: torch.Tensor
    residual: torch.Tensor
    support: torch.Tensor
    seconds: float
    solver: UnrolledSolver
    debiased: bool
    bayes_refit: bool = False


def _measurements(A: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = as_float_tensor(y, "y")
    if y.ndim == 1:
        y = y.unsqueeze(0)
    if y.ndim != 2 or y.shape[1] != A.shape[0]:
        raise ValueError(f"y must have shape (m,) or (batch, m) with m = {A.shape[0]} (the rows "
                         f"of A), got {tuple(y.shape)}")
    return y


def build_recovery_solver(A: torch.Tensor, config: RecoveryConfig) -> HyperLISTA:
    """HyperLISTA for ``A``: calibrated on samples from the Bernoulli(p)-Gaussian prior
    (``config.calibrate``), else the shipped setting told p and the SNR when given."""
    if config.calibrate:
        return HyperLISTA.calibrate(A, p=0.1 if config.p is None else config.p,
                                    snr_db=config.snr_db, num_layers=config.num_layers,
                                    seed=config.seed, momentum=config.momentum)
    return HyperLISTA(A, num_layers=config.num_layers, p=config.p, snr_db=config.snr_db,
                      momentum=config.momentum)


@torch.no_grad()
def recover(A: torch.Tensor, y: torch.Tensor, solver: UnrolledSolver | None = None,
            config: RecoveryConfig | None = None, device: str | torch.device = "cpu"
            ) -> Recovery:
    """Recover sparse x from y = A x (+ noise).

    A: (m, n); y: (m,) or (batch, m). ``solver``: a solver for this A (e.g. from
    :func:`~sparseprior.solvers.unrolled.load_solver`); default :func:`build_recovery_solver`
    with ``config``. ``config.debias``: least squares on the found support afterwards;
    ``config.bayes_refit``: the empirical-Bayes refit for noisy problems.
    """
    config = config or RecoveryConfig()
    A = as_float_tensor(A, "A", ndim=2)
    y = _measurements(A, y)
    if solver is None:
        solver = build_recovery_solver(A, config)
    elif config.builds_solver:
        raise ValueError("a given solver is used as it is: set only the refit in the config "
                         "(p, snr_db, calibrate, num_layers and seed build a solver; p and "
                         "snr_db may describe the prior of bayes_refit)")
    if (solver.m, solver.n) != tuple(A.shape):
        raise ValueError(f"the solver was built for (m, n) = ({solver.m}, {solver.n}) but A has "
                         f"shape {tuple(A.shape)}")
    dev = resolve_device(device)
    solver = solver.to(dev).eval()
    A, y = A.to(dev), y.to(dev)
    start = time.perf_counter()
    x = solver(y)[-1]
    if config.debias:
        x = debias_estimate(A, y, x)
    if config.bayes_refit:
        x = bayes_refit(A, y, x, p=config.p, snr_db=config.snr_db)
    seconds = time.perf_counter() - start
    residual = (x @ A.T - y).norm(dim=1) / y.norm(dim=1).clamp_min(torch.finfo(y.dtype).tiny)
    return Recovery(x=x.cpu(), residual=residual.cpu(), support=(x != 0).sum(dim=1).cpu(),
                    seconds=seconds, solver=solver, debiased=config.debias,
                    bayes_refit=config.bayes_refit)
