"""Layer-density rules: uniform, ER and ERK (pure functions of shapes and a global density).

Every rule gives each layer ``l`` a density ``d_l = eps * raw_l`` (capped at 1) where ``raw_l`` is a
per-layer shape score and ``eps`` is solved so that the expected number of kept weights equals the
global target: ``sum_l d_l * n_l = density * sum_l n_l`` (``n_l`` = number of weights in layer l).

* ``uniform``: ``raw_l = 1``.
* ``er`` (Erdős–Rényi, Mocanu et al. 2018): ``raw_l = (c_out + c_in) / (c_out * c_in)`` using only
  the first two dimensions of the weight (``(out, in, ...)``, PyTorch layout).
* ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020): ``raw_l = sum(shape) / prod(shape)``, so conv
  kernels count too.

Dense capping: a layer whose density would exceed 1 is made dense and ``eps`` is re-solved for the
rest, repeatedly, so no layer exceeds 1 and the total still hits the target (up to per-layer
rounding of ``round(d_l * n_l)``, i.e. at most one weight per layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from sparseprior.common.validation import check_range

Shapes = Mapping[str, Sequence[int]]

DISTRIBUTIONS = ("uniform", "er", "erk")


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


def _uniform_raw(shape: Sequence[int]) -> float:
    return 1.0


def _er_raw(shape: Sequence[int]) -> float:
    if len(shape) < 2:
        return sum(shape) / _numel(shape)
    c_out, c_in = int(shape[0]), int(shape[1])
    return (c_out + c_in) / (c_out * c_in)


def _erk_raw(shape: Sequence[int]) -> float:
    return sum(int(s) for s in shape) / _numel(shape)


_RAW: dict[str, Callable[[Sequence[int]], float]] = {
    "uniform": _uniform_raw,
    "er": _er_raw,
    "erk": _erk_raw,
}


def _check_shapes(shapes: Shapes) -> None:
    if not shapes:
        raise ValueError("shapes is empty; pass at least one layer name -> weight shape")
    for name, shape in shapes.items():
        if len(shape) == 0 or any(int(s) <= 0 for s in shape):
            raise ValueError(f"layer {name!r} has shape {tuple(shape)}; every dimension must "
                             f"be >= 1")


def layer_densities(
    shapes: Shapes,
    density: float,
    distribution: str = "erk",
    *,
    dense_layers: Iterable[str] = (),
) -> dict[str, float]:
    """Per-layer densities in ``[0, 1]`` whose weighted mean is ``density``.

    Args:
        shapes: layer name -> weight shape (PyTorch layout ``(out, in, *kernel)``).
        density: global fraction of weights to keep, in ``(0, 1]``.
        distribution: ``'uniform'``, ``'er'`` or ``'erk'``.
        dense_layers: names forced to density 1 (their weights count towards the budget).

    Returns:
        layer name -> density, in the order of ``shapes``.

    Raises:
        ValueError: unknown distribution or layer, bad density, or forced-dense layers that alone
            exceed the budget.
    """
    if distribution not in _RAW:
        raise ValueError(f"distribution={distribution!r} is not one of {list(DISTRIBUTIONS)}")
    _check_shapes(shapes)
    check_range(float(density), "density", 0.0, 1.0, low_inclusive=False)
    dense = set(dense_layers)
    unknown = sorted(dense - set(shapes))
    if unknown:
        raise ValueError(f"dense_layers {unknown} are not among the layers {list(shapes)}")

    raw = {name: _RAW[distribution](shape) for name, shape in shapes.items()}
    numel = {name: _numel(shape) for name, shape in shapes.items()}
    target = density * sum(numel.values())
    while True:
        budget = target - sum(numel[n] for n in dense)
        if budget < -1e-9:
            raise ValueError(f"dense_layers {sorted(dense)} hold more weights than the global "
                             f"density {density} allows; lower the number of dense layers")
        sparse = [n for n in shapes if n not in dense]
        denom = sum(raw[n] * numel[n] for n in sparse)
        eps = budget / denom if denom > 0 else 0.0
        overflow = [n for n in sparse if eps * raw[n] > 1.0]
        if not overflow:
            break
        dense.update(overflow)
    return {n: 1.0 if n in dense else min(1.0, max(0.0, eps * raw[n])) for n in shapes}


def uniform_densities(shapes: Shapes, density: float, **kw: object) -> dict[str, float]:
    """Every layer gets ``density`` (see :func:`layer_densities`)."""
    return layer_densities(shapes, density, "uniform", **kw)  # type: ignore[arg-type]


def er_densities(shapes: Shapes, density: float, **kw: object) -> dict[str, float]:
    """Erdős–Rényi densities (see :func:`layer_densities`)."""
    return layer_densities(shapes, density, "er", **kw)  # type: ignore[arg-type]


def erk_densities(shapes: Shapes, density: float, **kw: object) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (see :func:`layer_densities`)."""
    return layer_densities(shapes, density, "erk", **kw)  # type: ignore[arg-type]


def kept_counts(shapes: Shapes, densities: Mapping[str, float]) -> dict[str, int]:
    """Number of weights each layer keeps: ``round(density_l * numel_l)``."""
    return {n: int(round(densities[n] * _numel(s))) for n, s in shapes.items()}
