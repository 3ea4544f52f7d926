"""Dynamic sparse training: SET, RigL, GraNet and a static sparse baseline on the one loop.

::

    from sparseprior.dst import DSTConfig, DynamicSparsity, initial_masks
    from sparseprior.engine import Trainer, TrainConfig

    dst = DynamicSparsity(DSTConfig(method="rigl", sparsity=0.9, delta_t=100))
    masks = initial_masks(model, dst.config)          # random ERK mask, exact per-layer counts
    Trainer(model, train_set, TrainConfig(epochs=10), masks=masks, callbacks=[dst]).fit()

    sparse = to_sparse_inference(model)               # CSR linear layers for real speed-ups

Or a whole experiment with a run folder: ``run_dst(DSTRunConfig(...), "runs/dst/rigl90")``,
and ``sparseprior dst train --method rigl --sparsity 0.9`` on the command line.
"""

from sparseprior.dst.config import (
    DST_DISTRIBUTIONS,
    DYNAMIC_METHODS,
    METHODS,
    DSTConfig,
    DSTRunConfig,
    default_dst_train,
)
from sparseprior.dst.inference import (
    CSRLinear,
    compare_latency,
    csr_layers,
    export_run,
    load_sparse_inference,
    max_output_difference,
    save_sparse_inference,
    to_sparse_inference,
)
from sparseprior.dst.methods import DynamicSparsity, UpdateSchedule, initial_masks, target_counts
from sparseprior.dst.train import load_run_model, load_splits, run_dst

__all__ = [
    "CSRLinear",
    "DSTConfig",
    "DSTRunConfig",
    "DST_DISTRIBUTIONS",
    "DYNAMIC_METHODS",
    "DynamicSparsity",
    "METHODS",
    "UpdateSchedule",
    "compare_latency",
    "export_run",
    "csr_layers",
    "default_dst_train",
    "initial_masks",
    "load_run_model",
    "load_sparse_inference",
    "load_splits",
    "max_output_difference",
    "run_dst",
    "save_sparse_inference",
    "target_counts",
    "to_sparse_inference",
]
