"""Dynamic sparse training: SET, RigL, GraNet and a static sparse baseline on the one loop.

A method is a :class:`DSTPolicy` registered in :data:`DST_POLICIES` (see
:mod:`sparseprior.dst.policies` and docs/extending.md).

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
    METHODS,
    DSTConfig,
    DSTRunConfig,
    default_dst_train,
    dynamic_methods,
)
from sparseprior.dst.inference import (
    CSRLinear,
    ExportConfig,
    compare_latency,
    csr_layers,
    export_run,
    load_sparse_inference,
    max_output_difference,
    save_sparse_inference,
    to_sparse_inference,
)
from sparseprior.dst.methods import DynamicSparsity, initial_masks, target_counts
from sparseprior.dst.policies import DST_POLICIES, DSTPolicy, policy_for
from sparseprior.dst.schedule import UpdateSchedule
from sparseprior.dst.train import load_run_model, load_splits, run_dst

__all__ = [
    "CSRLinear",
    "DSTConfig",
    "DSTRunConfig",
    "DST_DISTRIBUTIONS",
    "DST_POLICIES",
    "DSTPolicy",
    "DynamicSparsity",
    "ExportConfig",
    "METHODS",
    "UpdateSchedule",
    "compare_latency",
    "export_run",
    "csr_layers",
    "default_dst_train",
    "dynamic_methods",
    "initial_masks",
    "load_run_model",
    "load_sparse_inference",
    "load_splits",
    "max_output_difference",
    "policy_for",
    "run_dst",
    "save_sparse_inference",
    "target_counts",
    "to_sparse_inference",
]
