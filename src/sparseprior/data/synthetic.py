"""Seeded synthetic classification data in image shape (Gaussian blobs), for tests and demos."""

from __future__ import annotations

import torch

from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_positive_int, check_range


def make_blobs(
    n: int,
    *,
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    class_sep: float = 4.0,
    noise: float = 1.0,
    seed: int | torch.Generator = 0,
    centers: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian blobs shaped like images.

    Class ``k`` has a centre ``c_k`` (a random direction of Euclidean norm ``class_sep``); a
    sample is ``c_k + noise * N(0, I)``. Labels are balanced (``i % num_classes``, shuffled).

    Returns ``(x, y, centers)``: ``x`` is ``(n, *image_shape)`` float32, ``y`` is ``(n,)`` int64
    in ``0..num_classes-1``, ``centers`` is ``(num_classes, *image_shape)``. Pass ``centers``
    back in to draw more samples of the same classes (e.g. a test set).
    """
    n = check_positive_int(n, "n")
    num_classes = check_positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
    check_range(class_sep, "class_sep", 0.0)
    check_range(noise, "noise", 0.0)
    gen = make_generator(seed)
    if centers is None:
        directions = torch.randn(num_classes, *shape, generator=gen)
        norms = directions.flatten(1).norm(dim=1).clamp_min(1e-12)
        centers = directions * (class_sep / norms).view(-1, 1, 1, 1)
    elif tuple(centers.shape) != (num_classes, *shape):
        raise ValueError(f"centers must have shape {(num_classes, *shape)}, "
                         f"got {tuple(centers.shape)}")
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    x = centers[y] + noise * torch.randn(n, *shape, generator=gen)
    return x.float(), y.long(), centers


def make_synthetic_arrays(
    *,
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    class_sep: float = 4.0,
    noise: float = 1.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Train and test blobs that share class centres: ``{"x_train", "y_train", "x_test",
    "y_test"}`` with shapes ``(n, *image_shape)`` / ``(n,)``. Same ``seed``, same tensors."""
    gen = make_generator(seed)
    x_tr, y_tr, centers = make_blobs(n_train, num_classes=num_classes, image_shape=image_shape,
                                     class_sep=class_sep, noise=noise, seed=gen)
    x_te, y_te, _ = make_blobs(n_test, num_classes=num_classes, image_shape=image_shape,
                               class_sep=class_sep, noise=noise, seed=gen, centers=centers)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
