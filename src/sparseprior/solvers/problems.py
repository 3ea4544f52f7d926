"""Sparse recovery problems ``y = A x* + noise`` (the LISTA/ALISTA benchmark setup).

Shapes are batch-first: ``x`` is (batch, n), ``y`` is (batch, m), ``A`` is (m, n).
Default: m=250, n=500, A_ij ~ N(0, 1/m) with unit-norm columns, x* Bernoulli(p=0.1) support
with N(0, 1) values, noiseless.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from sparseprior.common.checkpoint import atomic_write_bytes
from sparseprior.common.config import Config
from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import as_float_tensor, check_positive_int, check_range

# Fixed evaluation sets use seeds derived from the problem seed.
_VAL_OFFSET, _TEST_OFFSET = 1_000_003, 2_000_003


@dataclasses.dataclass
class ProblemConfig(Config):
    """Problem description.

    Attributes:
        m: measurements (rows of A).
        n: signal size (columns of A).
        p: Bernoulli probability of a non-zero in x*.
        snr_db: noise SNR in dB (None: noiseless).
        kappa: condition number of A (None: Gaussian A).
        seed: seed of A and of the fixed validation/test sets.
        n_val: fixed validation samples.
        n_test: fixed test samples.
    """

    m: int = 250
    n: int = 500
    p: float = 0.1
    snr_db: float | None = None
    kappa: float | None = None
    seed: int = 0
    n_val: int = 1000
    n_test: int = 1000

    def validate(self) -> None:
        check_positive_int(self.m, "m")
        check_positive_int(self.n, "n")
        check_range(self.p, "p", 0.0, 1.0, low_inclusive=False)
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be a finite number of dB or None, got {self.snr_db}")
        if self.kappa is not None:
            check_range(self.kappa, "kappa", 1.0)
        check_positive_int(self.n_val, "n_val")
        check_positive_int(self.n_test, "n_test")


def gaussian_matrix(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A (m, n) with i.i.d. N(0, 1/m) entries, then unit-norm columns."""
    A = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    return A / A.norm(dim=0, keepdim=True)


def condition_matrix(A: torch.Tensor, kappa: float, rounds: int = 50) -> torch.Tensor:
    """Give ``A`` a log-spaced singular-value profile from 1 to 1/kappa with unit-norm columns.

    Alternates "set the singular values" and "renormalise the columns" so the result has both
    properties to good accuracy (a single pass drifts from kappa after renormalising).
    """
    k = min(A.shape)
    profile = torch.logspace(0.0, -math.log10(kappa), k, dtype=torch.float64)
    A = A.double()
    for _ in range(rounds):
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        A = U @ torch.diag(profile) @ Vh
        A = A / A.norm(dim=0, keepdim=True)
    return A


def condition_number(A: torch.Tensor) -> float:
    s = torch.linalg.svdvals(A.double())
    return float(s[0] / s[-1])


@functools.lru_cache(maxsize=256)
def l1_phase_transition(delta: float) -> float:
    """rho*(delta): the largest k/m at which l1 minimisation (and soft-threshold AMP) recovers
    a k-sparse signed x* from m = delta n Gaussian measurements, asymptotically (the
    Donoho-Tanner weak threshold, in the closed form of Donoho, Maleki & Montanari 2009):
    max over z >= 0 of (1 - (2/delta) t(z)) / (1 + z^2 - 2 t(z)), t(z) = (1+z^2) Phi(-z) -
    z phi(z); about 0.386 at delta = 0.5, 1 at delta = 1. ``delta`` in (0, 1]."""
    delta = float(delta)
    if not (0.0 < delta <= 1.0):
        raise ValueError(f"delta = m/n must be in (0, 1], got {delta!r}")
    z = np.linspace(1e-4, 8.0, 8001)
    for _ in range(3):                       # a grid, refined twice around its maximum
        phi = np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
        tail = 0.5 * np.array([math.erfc(v / math.sqrt(2.0)) for v in z])
        t = (1.0 + z * z) * tail - z * phi
        rho = (1.0 - (2.0 / delta) * t) / (1.0 + z * z - 2.0 * t)
        i = int(np.argmax(rho))
        step = z[1] - z[0]
        z = np.linspace(max(z[i] - step, 1e-6), z[i] + step, 401)
    return float(rho[i])


class SparseRecoveryProblem:
    """A fixed sensing matrix plus seeded sampling of (x*, y) pairs.

    >>> prob = SparseRecoveryProblem.generate(ProblemConfig(m=50, n=100))
    >>> x, y = prob.sample(32, torch.Generator().manual_seed(0))   # (32, 100), (32, 50)
    """

    def __init__(self, A: torch.Tensor, config: ProblemConfig) -> None:
        A = as_float_tensor(A, "A", ndim=2)
        if tuple(A.shape) != (config.m, config.n):
            raise ValueError(f"A has shape {tuple(A.shape)} but config says (m, n) = "
                             f"({config.m}, {config.n})")
        norms = A.norm(dim=0)
        if (norms == 0).any():
            cols = torch.nonzero(norms == 0).flatten()[:10].tolist()
            raise ValueError(f"A has all-zero column(s) {cols}: every column must be non-zero")
        self.A = A.contiguous()
        self.config = config
        self._fixed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def generate(cls, config: ProblemConfig | None = None) -> SparseRecoveryProblem:
        config = config or ProblemConfig()
        gen = make_generator(config.seed)
        A = gaussian_matrix(config.m, config.n, gen)
        if config.kappa is not None:
            A = condition_matrix(A, config.kappa)
        return cls(A.float(), config)

    @classmethod
    def from_matrix(cls, A: np.ndarray | torch.Tensor, **config_fields: object
                    ) -> SparseRecoveryProblem:
        """Wrap a user-given A (numpy or torch, shape (m, n)); other fields as in ProblemConfig."""
        A_t = as_float_tensor(A, "A", ndim=2)
        if "kappa" in config_fields:
            raise ValueError("kappa applies to generated matrices only; condition your A yourself")
        config = ProblemConfig(m=A_t.shape[0], n=A_t.shape[1], **config_fields)  # type: ignore[arg-type]
        return cls(A_t, config)

    # -- properties ---------------------------------------------------------------------------
    @property
    def m(self) -> int:
        return self.config.m

    @property
    def n(self) -> int:
        return self.config.n

    @property
    def lipschitz(self) -> float:
        """L = ||A||_2^2, the Lipschitz constant of the gradient of 0.5 ||Ax - y||^2."""
        return float(torch.linalg.matrix_norm(self.A.double(), ord=2) ** 2)

    @property
    def condition_number(self) -> float:
        return condition_number(self.A)

    # -- sampling -----------------------------------------------------------------------------
    def sample_x(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """x* (batch, n): Bernoulli(p) support, N(0, 1) values."""
        support = torch.rand(batch_size, self.n, generator=generator) < self.config.p
        values = torch.randn(batch_size, self.n, generator=generator)
        return values * support

    def _A_on(self, device: torch.device) -> torch.Tensor:
        if device == self.A.device:
            return self.A
        cached = getattr(self, "_A_device", None)
        if cached is None or cached.device != device:
            self._A_device = cached = self.A.to(device)
        return cached

    def measure(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y = A x + noise (batch, m) on x's device; noise at ``snr_db`` per sample relative
        to A x, drawn from ``generator`` (a CPU generator: the same numbers on every device)."""
        clean = x @ self._A_on(x.device).T
        if self.config.snr_db is None:
            return clean
        sigma = clean.norm(dim=1, keepdim=True) / math.sqrt(self.m)
        sigma = sigma * 10.0 ** (-self.config.snr_db / 20.0)
        noise = torch.randn(clean.shape, generator=generator)
        return clean + sigma * noise.to(clean.device)

    def sample(self, batch_size: int, generator: torch.Generator | int | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh batch ``(x*, y)``: x* (batch, n), y (batch, m), on ``device`` (default
        CPU; y = A x* is then computed there)."""
        check_positive_int(batch_size, "batch_size")
        gen = make_generator(generator)
        x = self.sample_x(batch_size, gen)
        if device is not None:
            x = x.to(device)
        return x, self.measure(x, gen)

    def _fixed_set(self, name: str, size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._fixed:
            self._fixed[name] = self.sample(size, make_generator(self.config.seed + offset))
        return self._fixed[name]

    def validation_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed, seeded validation set ``(x*, y)`` of ``n_val`` samples."""
        return self._fixed_set("val", self.config.n_val, _VAL_OFFSET)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed, seeded test set ``(x*, y)`` of ``n_test`` samples."""
        return self._fixed_set("test", self.config.n_test, _TEST_OFFSET)

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save A, the config and the fixed sets to ``.npz`` or ``.safetensors``."""
        path = Path(path)
        xv, yv = self.validation_set()
        xt, yt = self.test_set()
        arrays = {"A": self.A, "x_val": xv, "y_val": yv, "x_test": xt, "y_test": yt}
        config_json = self.config.to_json()
        if path.suffix == ".npz":
            buffer = io.BytesIO()
            np.savez(buffer, config=np.array(config_json),
                     **{k: v.numpy() for k, v in arrays.items()})
            data = buffer.getvalue()
        elif path.suffix == ".safetensors":
            data = st_save({k: v.contiguous() for k, v in arrays.items()},
                           metadata={"config": config_json})
        else:
            raise ValueError(f"problem file must end in .npz or .safetensors, got {path.name!r}")
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> SparseRecoveryProblem:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"problem file {str(path)!r} not found")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                config = ProblemConfig.from_dict(_json(str(data["config"])))
                arrays = {k: torch.from_numpy(data[k]) for k in data.files if k != "config"}
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                config = ProblemConfig.from_dict(_json(fh.metadata()["config"]))
            arrays = load_file(str(path))
        else:
            raise ValueError(f"problem file must end in .npz or .safetensors, got {path.name!r}")
        prob = cls(arrays["A"], config)
        prob._fixed = {"val": (arrays["x_val"], arrays["y_val"]),
                       "test": (arrays["x_test"], arrays["y_test"])}
        return prob

    def __repr__(self) -> str:
        c = self.config
        return (f"SparseRecoveryProblem(m={c.m}, n={c.n}, p={c.p}, snr_db={c.snr_db}, "
                f"kappa={c.kappa}, seed={c.seed})")


def _json(text: str) -> dict:
    import json

    return json.loads(text)
