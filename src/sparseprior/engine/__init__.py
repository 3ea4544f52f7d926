"""The one training loop: :class:`Trainer` + :class:`Callback` s, DDP, checkpoints, resume.

::

    from sparseprior.engine import Trainer, TrainConfig
    trainer = Trainer(model, train_set, TrainConfig(epochs=5, lr=0.05), val_set=val_set,
                      masks=masks, run_dir="runs/demo", callbacks=[MyCallback()])
    history = trainer.fit()            # trainer.fit(resume=True) continues a stopped run
"""

from sparseprior.engine.callbacks import Callback, LambdaCallback, WeightSnapshot
from sparseprior.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sparseprior.engine.config import TrainConfig
from sparseprior.engine.data import (
    ResumableSampler,
    make_eval_loader,
    make_train_loader,
    shard,
    start_epoch,
)
from sparseprior.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_buffers,
    cleanup_distributed,
    env_dist_info,
    find_free_port,
    init_distributed,
    is_distributed,
    launch,
)
from sparseprior.engine.optim import build_optimizer, build_scheduler, lr_factor_fn
from sparseprior.engine.state import flatten_state, rng_state, set_rng_state, unflatten_state
from sparseprior.engine.trainer import DivergenceError, Trainer

__all__ = [
    "Callback",
    "DistInfo",
    "DivergenceError",
    "LambdaCallback",
    "ResumableSampler",
    "TrainConfig",
    "Trainer",
    "WeightSnapshot",
    "all_reduce_sum",
    "broadcast_buffers",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "env_dist_info",
    "find_free_port",
    "flatten_state",
    "init_distributed",
    "is_distributed",
    "latest_checkpoint",
    "launch",
    "load_checkpoint",
    "lr_factor_fn",
    "make_eval_loader",
    "make_train_loader",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "shard",
    "start_epoch",
    "unflatten_state",
]
