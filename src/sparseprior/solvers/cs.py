"""Compressive sensing of real image patches with learned and classic sparse solvers.

Pipeline (all gray images scaled to [0, 1]):

1. 16 x 16 patches (as vectors of length d = 256) from training images (scikit-image's bundled
   images by default, or a folder of your own);
2. a dictionary D (d, n_atoms) with unit-norm columns: a constant (DC) atom plus atoms learned
   on mean-removed training patches with scikit-learn's ``MiniBatchDictionaryLearning``
   (``"mbdl"``), or the orthonormal 2-D DCT basis (``"dct"``, no learning);
3. a Gaussian sensing matrix Phi (M, d), M = round(rate * d), entries N(0, 1/M); the solvers see
   y = Phi p for a patch p and recover a code x with p ~ D x, so A = Phi D (M, n_atoms);
4. training codes x* = OMP codes of the training patches (``n_nonzero`` atoms), so learned
   solvers train on (x*, y = Phi p) pairs of *real* patches (y includes what D misses);
5. every test image is cut into non-overlapping patches, each patch is measured and recovered,
   and the patches are put back into an image: PSNR (dB, peak 1) per test image for FISTA
   (lambda tuned on validation patches, many iterations) and the learned solvers.

:class:`PatchProblem` wraps 2-4 as a :class:`~.problems.SparseRecoveryProblem`, so the staged
trainer and the tuner work on it unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseprior.common.config import Config
from sparseprior.common.registry import Registry
from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_positive_int
from sparseprior.solvers.fit import LEARNED_SOLVERS, FitConfig, fit_solver
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem

log = logging.getLogger(__name__)

__all__ = ["BUNDLED_IMAGES", "CSConfig", "DICTIONARIES", "DictionarySpec", "PatchProblem",
           "assemble_patches", "dct_dictionary", "extract_patches", "learn_dictionary",
           "load_image", "load_images", "mbdl_dictionary", "omp_codes", "psnr", "random_patches",
           "run_cs", "sensing_matrix"]

#: scikit-image images shipped inside the package (none of them downloads).
BUNDLED_IMAGES = ("astronaut", "camera", "coins", "moon", "page", "text", "coffee", "chelsea",
                  "rocket", "brick", "grass", "gravel", "clock", "immunohistochemistry",
                  "hubble_deep_field")
#: The default training / test images of :func:`run_cs` (disjoint).
TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass")
TEST_IMAGES = ("camera", "coins", "moon")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# --------------------------------------------------------------------------------------------
# Images and patches
# --------------------------------------------------------------------------------------------
def _to_gray(image: np.ndarray, name: str) -> np.ndarray:
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = rgb2gray(image)
    if image.ndim != 2:
        raise ValueError(f"image {name!r} must be 2-D gray, RGB or RGBA, got shape "
                         f"{image.shape}")
    return img_as_float(image).astype(np.float64)


def load_image(name: str | Path) -> np.ndarray:
    """A gray image in [0, 1] (H, W): a name from :data:`BUNDLED_IMAGES` or an image file."""
    import skimage.data
    import skimage.io

    if isinstance(name, str) and name in BUNDLED_IMAGES:
        return _to_gray(getattr(skimage.data, name)(), name)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"image {str(name)!r} is neither a bundled image "
                         f"({', '.join(BUNDLED_IMAGES)}) nor an existing file")
    try:
        image = skimage.io.imread(path)
    except Exception as err:  # imageio/PIL raise many types for non-image files
        raise ValueError(f"image {str(path)!r} is not a readable image file "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                         ) from None
    return _to_gray(np.asarray(image), str(path))


def load_images(names: Sequence[str | Path] | str | Path) -> dict[str, np.ndarray]:
    """Images by name: a sequence of bundled names/files, a comma-separated string of them, or
    one folder of image files."""
    if isinstance(names, str) and "," in names:
        names = [n.strip() for n in names.split(",") if n.strip()]
    if isinstance(names, (str, Path)) and Path(names).is_dir():
        files = sorted(p for p in Path(names).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"folder {str(names)!r} has no image files ({IMAGE_SUFFIXES})")
        return {p.stem: load_image(p) for p in files}
    if isinstance(names, (str, Path)):
        names = [names]
    return {Path(str(n)).stem if str(n) not in BUNDLED_IMAGES else str(n): load_image(n)
            for n in names}


def extract_patches(image: np.ndarray, size: int = 16) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` patches of ``image`` (H, W), row-major, as vectors
    (N, size*size); the image is cropped to multiples of ``size``."""
    check_positive_int(size, "size")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    H, W = (image.shape[0] // size) * size, (image.shape[1] // size) * size
    if H == 0 or W == 0:
        raise ValueError(f"image {image.shape} is smaller than one {size}x{size} patch")
    blocks = image[:H, :W].reshape(H // size, size, W // size, size).transpose(0, 2, 1, 3)
    return blocks.reshape(-1, size * size).copy()


def assemble_patches(patches: np.ndarray, shape: tuple[int, int], size: int = 16
                     ) -> np.ndarray:
    """Inverse of :func:`extract_patches`: patches (N, size*size) -> image of ``shape``
    cropped to multiples of ``size``."""
    H, W = (shape[0] // size) * size, (shape[1] // size) * size
    rows, cols = H // size, W // size
    patches = np.asarray(patches)
    if patches.shape != (rows * cols, size * size):
        raise ValueError(f"expected {rows * cols} patches of {size * size} values for an image "
                         f"of shape {shape}, got {patches.shape}")
    return patches.reshape(rows, cols, size, size).transpose(0, 2, 1, 3).reshape(H, W)


def random_patches(images: Sequence[np.ndarray], count: int, size: int = 16,
                   seed: int = 0) -> np.ndarray:
    """``count`` random (overlapping) patches (count, size*size), spread evenly over images."""
    from sklearn.feature_extraction.image import extract_patches_2d

    check_positive_int(count, "count")
    per = math.ceil(count / len(images))
    rng = np.random.RandomState(seed)
    parts = [extract_patches_2d(im, (size, size), max_patches=per, random_state=rng)
             .reshape(per, -1) for im in images]
    return np.concatenate(parts)[:count]


def psnr(estimate: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """PSNR(dB) = 10 log10(peak^2 / MSE) of ``estimate`` against ``reference``."""
    mse = float(np.mean((np.asarray(estimate) - np.asarray(reference)) ** 2))
    return 10.0 * math.log10(peak ** 2 / max(mse, 1e-30))


# --------------------------------------------------------------------------------------------
# Dictionary and sensing
# --------------------------------------------------------------------------------------------
def dct_dictionary(size: int = 16) -> np.ndarray:
    """The orthonormal 2-D DCT-II basis for ``size`` x ``size`` patches: (size^2, size^2); the
    first column is the constant atom."""
    k = np.arange(size)
    C = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * size))
    C[0] /= math.sqrt(2.0)
    C *= math.sqrt(2.0 / size)                   # rows: orthonormal 1-D DCT atoms
    return np.kron(C, C).T                        # columns: 2-D atoms (row-major patches)


@dataclasses.dataclass(frozen=True)
class DictionarySpec:
    """``build(patches (N, d), n_atoms, *, alpha, max_iter, seed) -> D (d, n_atoms)``;
    ``square``: the dictionary has exactly d atoms (a basis)."""

    build: Callable[..., np.ndarray]
    square: bool = False


#: Dictionaries by name.
DICTIONARIES: Registry[DictionarySpec] = Registry("dictionary")


def mbdl_dictionary(patches: np.ndarray, n_atoms: int, *, alpha: float = 0.1,
                    max_iter: int = 5, seed: int = 0) -> np.ndarray:
    """scikit-learn's MiniBatchDictionaryLearning (``n_atoms - 1`` atoms, sparsity weight
    ``alpha``, ``max_iter`` passes) on mean-removed patches, plus the constant atom."""
    d = patches.shape[1]
    check_positive_int(n_atoms, "n_atoms")
    if n_atoms < 2:
        raise ValueError(f"n_atoms must be >= 2 (a DC atom plus learned ones), got {n_atoms}")
    from sklearn.decomposition import MiniBatchDictionaryLearning

    centred = patches - patches.mean(axis=1, keepdims=True)
    learner = MiniBatchDictionaryLearning(n_components=n_atoms - 1, alpha=alpha,
                                          batch_size=256, max_iter=max_iter,
                                          random_state=seed, fit_algorithm="cd")
    atoms = learner.fit(centred).components_.T                   # (d, n_atoms - 1)
    D = np.concatenate([np.full((d, 1), 1.0 / math.sqrt(d)), atoms], axis=1)
    norms = np.linalg.norm(D, axis=0)
    D[:, norms < 1e-12] = np.random.RandomState(seed).randn(d, int((norms < 1e-12).sum()))
    return D / np.linalg.norm(D, axis=0, keepdims=True)


def _dct(patches: np.ndarray, n_atoms: int, **_: Any) -> np.ndarray:
    """The 2-D DCT basis (needs ``n_atoms == d``; ``patches`` only give d)."""
    d = patches.shape[1]
    if n_atoms != d:
        raise ValueError(f"the DCT dictionary has exactly d = {d} atoms, got n_atoms = "
                         f"{n_atoms}")
    return dct_dictionary(int(round(math.sqrt(d))))


DICTIONARIES.register("mbdl", DictionarySpec(mbdl_dictionary))
DICTIONARIES.register("dct", DictionarySpec(_dct, square=True))


def learn_dictionary(patches: np.ndarray, n_atoms: int = 256, *, method: str = "mbdl",
                     alpha: float = 0.1, max_iter: int = 5, seed: int = 0) -> np.ndarray:
    """Dictionary (d, n_atoms) with unit-norm columns; column 0 is the constant atom.

    ``method``: a name of :data:`DICTIONARIES` ("mbdl": learned; "dct": the 2-D DCT basis).
    """
    build = DICTIONARIES.get(method).build
    patches = np.asarray(patches, dtype=np.float64)
    d = patches.shape[1]
    if int(round(math.sqrt(d))) ** 2 != d:
        raise ValueError(f"patches must be square (d = size^2), got d = {d}")
    return build(patches, n_atoms, alpha=alpha, max_iter=max_iter, seed=seed)


def sensing_matrix(rate: float, d: int, seed: int = 0) -> np.ndarray:
    """Gaussian Phi (M, d), M = max(1, round(rate * d)), entries N(0, 1/M).

    ``rate`` is the sampling rate M/d and must lie in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ValueError(f"sampling rate must be in (0, 1] (measurements per pixel), "
                         f"got {rate!r}")
    check_positive_int(d, "d")
    M = max(1, int(round(rate * d)))
    return np.random.RandomState(seed).randn(M, d) / math.sqrt(M)


def omp_codes(patches: np.ndarray, D: np.ndarray, n_nonzero: int) -> np.ndarray:
    """Sparse codes (N, n_atoms) of patches (N, d) with at most ``n_nonzero`` atoms (OMP)."""
    from sklearn.decomposition import sparse_encode

    return sparse_encode(patches, D.T, algorithm="omp", n_nonzero_coefs=n_nonzero)


class PatchProblem(SparseRecoveryProblem):
    """Recover codes x (n_atoms) from y = Phi p (M) for real patches p ~ D x: A = Phi D.

    Training batches draw (x*, y) pairs from the training pool (y from the true patch); the
    validation and test sets are fixed held-out pools.
    """

    def __init__(self, D: np.ndarray, Phi: np.ndarray, train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray], seed: int = 0) -> None:
        A = torch.from_numpy(Phi @ D).float()
        codes, patches = train
        density = float(np.count_nonzero(codes)) / codes.size
        config = ProblemConfig(m=A.shape[0], n=A.shape[1], p=min(max(density, 1e-6), 1.0),
                               seed=seed, n_val=len(val[0]), n_test=len(val[0]))
        super().__init__(A, config)
        self.D = torch.from_numpy(D).float()
        self.Phi = torch.from_numpy(Phi).float()
        self._x_train = torch.from_numpy(codes).float()
        self._y_train = torch.from_numpy(patches @ Phi.T).float()
        held = (torch.from_numpy(val[0]).float(), torch.from_numpy(val[1] @ Phi.T).float())
        self._fixed = {"val": held, "test": held}
        self.val_patches = np.asarray(val[1], dtype=np.float64)

    def sample(self, batch_size: int, generator: torch.Generator | int | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of training pairs (x* (batch, n_atoms), y (batch, M)), drawn with
        replacement."""
        check_positive_int(batch_size, "batch_size")
        idx = torch.randint(len(self._x_train), (batch_size,), generator=make_generator(
            generator))
        x, y = self._x_train[idx], self._y_train[idx]
        return (x, y) if device is None else (x.to(device), y.to(device))

    def measure_patches(self, patches: np.ndarray) -> torch.Tensor:
        """y = Phi p for patches (N, d) -> (N, M)."""
        return torch.from_numpy(np.asarray(patches, dtype=np.float32)) @ self.Phi.T

    def patches_from_codes(self, codes: torch.Tensor) -> np.ndarray:
        """D x for codes (N, n_atoms) -> patches (N, d), clipped to [0, 1]."""
        return np.clip((codes.detach().cpu() @ self.D.T).double().numpy(), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------
def _cs_fit() -> FitConfig:
    """Fitting defaults for image patches: HyperLISTA's shipped setting was tuned on Gaussian
    A, so its grid spans 0.1x-30x; 500 validation patches score the search."""
    return FitConfig(grid_factors=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0), grid_rounds=2,
                     val_samples=500)


@dataclasses.dataclass
class CSConfig(Config):
    """Compressive sensing of image patches (see the module docstring).

    Attributes:
        rate: sampling rate M/d in (0, 1].
        size: patch side in pixels (d = size^2).
        n_atoms: dictionary atoms (None: d; the DCT dictionary has exactly d).
        dictionary: a name of DICTIONARIES: mbdl (MiniBatchDictionaryLearning) or dct.
        n_train: random training patches.
        n_val: random validation patches.
        n_nonzero: OMP sparsity of the training codes.
        dict_iter: MBDL passes.
        lams: FISTA's lambda grid (tuned on validation patches).
        fista_iters: FISTA iterations (FISTA is also reported after num_layers iterations,
            the learned solvers' depth).
        models: learned solvers (comma-separated names).
        fit: how the learned solvers are trained or tuned.
        seed: seeds everything random.
    """

    rate: float = 0.5
    size: int = 16
    n_atoms: int | None = None
    dictionary: str = "mbdl"
    n_train: int = 8000
    n_val: int = 1000
    n_nonzero: int = 16
    dict_iter: int = 3
    lams: tuple[float, ...] = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005)
    fista_iters: int = 500
    models: tuple[str, ...] = ("LISTA-CPSS", "ALISTA", "HyperLISTA")
    fit: FitConfig = dataclasses.field(default_factory=_cs_fit)
    seed: int = 0

    def validate(self) -> None:
        sensing_matrix(self.rate, 1)                       # validates the rate
        for key in ("size", "n_train", "n_val", "n_nonzero", "dict_iter", "fista_iters"):
            check_positive_int(getattr(self, key), key)
        square = DICTIONARIES.get(self.dictionary).square
        d = self.size * self.size
        if self.n_atoms is not None:
            check_positive_int(self.n_atoms, "n_atoms")
            if square and self.n_atoms != d:
                raise ValueError(f"n_atoms: the {self.dictionary} dictionary of {self.size}x"
                                 f"{self.size} patches has exactly d = {d} atoms, got "
                                 f"{self.n_atoms}")
        self.lams, self.models = tuple(self.lams), tuple(self.models)
        if not self.lams or any(not (lam > 0) for lam in self.lams):
            raise ValueError(f"lams must be positive, got {self.lams!r}")
        for name in self.models:
            LEARNED_SOLVERS.get(name)

    @property
    def atoms(self) -> int:
        """Dictionary atoms actually used."""
        return self.size * self.size if self.n_atoms is None else self.n_atoms


def build_patch_problem(train_images: dict[str, np.ndarray], config: CSConfig
                        ) -> PatchProblem:
    """Dictionary, sensing matrix and training/validation codes from the training images."""
    size = config.size
    pool = random_patches(list(train_images.values()), config.n_train + config.n_val, size,
                          config.seed)
    rng = np.random.RandomState(config.seed)
    pool = pool[rng.permutation(len(pool))]
    train, val = pool[:config.n_train], pool[config.n_train:]
    n_atoms = config.atoms
    D = learn_dictionary(train[:min(len(train), 10_000)], n_atoms, method=config.dictionary,
                         max_iter=config.dict_iter, seed=config.seed)
    Phi = sensing_matrix(config.rate, size * size, config.seed + 1)
    k = min(config.n_nonzero, n_atoms)
    return PatchProblem(D, Phi, (omp_codes(train, D, k), train), (omp_codes(val, D, k), val),
                        seed=config.seed)


@torch.no_grad()
def _reconstruct(solve: Any, problem: PatchProblem, image: np.ndarray, size: int
                 ) -> np.ndarray:
    patches = extract_patches(image, size)
    codes = solve(problem.measure_patches(patches))
    return assemble_patches(problem.patches_from_codes(codes), image.shape, size)


def _tune_fista_lambda(problem: PatchProblem, config: CSConfig) -> tuple[float, dict]:
    from sparseprior.solvers.classic import fista

    _, y = problem.validation_set()
    patches = problem.val_patches                       # the true validation patches
    scores = {}
    for lam in config.lams:
        x = fista(problem.A, y, lam, max_iter=config.fista_iters).x
        scores[lam] = psnr(problem.patches_from_codes(x), patches)
    return max(scores, key=scores.get), scores


def run_cs(run: RunDir, config: CSConfig | None = None, *,
           train_images: Sequence[str | Path] | str | Path = TRAIN_IMAGES,
           test_images: Sequence[str | Path] | str | Path = TEST_IMAGES,
           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Run the pipeline (module docstring); write ``cs.json``, ``table.md`` and a figure."""
    from sparseprior.solvers.classic import fista
    from sparseprior.solvers.unrolled import save_solver

    config = config or CSConfig()
    start = time.perf_counter()
    train = load_images(train_images)
    test = load_images(test_images)
    if set(train) & set(test):
        raise ValueError(f"train and test images overlap: {sorted(set(train) & set(test))}")
    run.write_json("config.json", {"cs": config.to_dict(), "train_images": list(train),
                                   "test_images": list(test)})
    problem = build_patch_problem(train, config)
    setup_s = time.perf_counter() - start
    lam, lam_scores = _tune_fista_lambda(problem, config)
    T = config.fit.num_layers
    solvers: dict[str, Any] = {
        f"FISTA ({config.fista_iters} it, lambda={lam:g})":
            lambda y: fista(problem.A, y, lam, max_iter=config.fista_iters).x,
        f"FISTA ({T} it, lambda={lam:g})": lambda y: fista(problem.A, y, lam, max_iter=T).x}
    info: dict[str, Any] = {}
    for name in config.models:
        fitted = fit_solver(name, problem, config.fit, device=device)
        model = fitted.model.cpu().eval()
        save_solver(model, run.path / "checkpoints" / name)
        info[name] = {"kind": fitted.kind, **fitted.info}
        solvers[f"{name} ({T} layers)"] = lambda y, model=model: model(y)[-1]
    rows, recon = [], {}
    for solver_name, solve in solvers.items():
        row: dict[str, Any] = {"solver": solver_name}
        for image_name, image in test.items():
            rec = _reconstruct(solve, problem, image, config.size)
            ref = assemble_patches(extract_patches(image, config.size), image.shape,
                                   config.size)
            row[f"{image_name} PSNR"] = psnr(rec, ref)
            recon[(solver_name, image_name)] = rec
        rows.append(row)
    first = next(iter(test))
    _plot(run.file("reconstructions.png"), test[first], first,
          {s: recon[(s, first)] for s in solvers}, config)
    data = {"rows": rows, "fista_lambda": lam, "fista_val_psnr": lam_scores, "models": info,
            "setup_seconds": setup_s, "total_seconds": time.perf_counter() - start,
            "m": problem.m, "n": problem.n, "train_code_density": problem.config.p}
    run.write_json("cs.json", data)
    run.write_text("table.md", f"Sampling rate {config.rate:g} (M = {problem.m} of d = "
                   f"{config.size ** 2}), {config.dictionary} dictionary with {problem.n} "
                   f"atoms; PSNR (dB) per test image:\n\n" + format_table(rows) + "\n")
    return data


def _plot(path: Path, image: np.ndarray, name: str, recs: dict[str, np.ndarray],
          config: CSConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = config.size
    ref = assemble_patches(extract_patches(image, size), image.shape, size)
    fig, axes = plt.subplots(1, len(recs) + 1, figsize=(3.2 * (len(recs) + 1), 3.6))
    axes[0].imshow(ref, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"{name} (original)", fontsize=8)
    for ax, (solver, rec) in zip(axes[1:], recs.items(), strict=True):
        ax.imshow(rec, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{solver}\n{psnr(rec, ref):.2f} dB", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Compressive sensing at rate {config.rate:g}, {size}x{size} patches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
