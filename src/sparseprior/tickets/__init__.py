"""Lottery tickets: IMP with weight rewinding (+ controls), Elastic LTH and (soon) Early-Bird.

::

    from sparseprior.tickets import IMPConfig, run_imp, ElasticConfig, run_elastic
    result = run_imp(IMPConfig(model="lenet300", dataset="fashion-mnist", levels=5,
                               ablations=["reinit", "random"]), "runs/imp")
    result.rows()     # level, density (counted), imp_acc, reinit_acc, random_acc

    ticket = transform_ticket(model, masks, target_depth=32, mapping="0:0;1:1,2;2:3,4")
"""

from sparseprior.tickets.elastic import (
    ElasticConfig,
    ElasticResult,
    ElasticTicket,
    check_mapping,
    default_mapping,
    every_other_mapping,
    format_mapping,
    model_depth,
    parse_mapping,
    plan_transform,
    replicate_mapping,
    run_elastic,
    transform_ticket,
)
from sparseprior.tickets.imp import (
    ABLATIONS,
    IMPConfig,
    IMPResult,
    build_seeded_model,
    level_dir,
    load_imp_result,
    load_splits,
    load_ticket,
    load_weights,
    matched_random_masks,
    prune_by_magnitude,
    rewind_,
    run_imp,
    save_weights,
    train_ticket,
)

__all__ = [
    "ABLATIONS",
    "ElasticConfig",
    "ElasticResult",
    "ElasticTicket",
    "IMPConfig",
    "IMPResult",
    "build_seeded_model",
    "check_mapping",
    "default_mapping",
    "every_other_mapping",
    "format_mapping",
    "level_dir",
    "load_imp_result",
    "load_splits",
    "load_ticket",
    "load_weights",
    "matched_random_masks",
    "model_depth",
    "parse_mapping",
    "plan_transform",
    "prune_by_magnitude",
    "replicate_mapping",
    "rewind_",
    "run_elastic",
    "run_imp",
    "save_weights",
    "train_ticket",
    "transform_ticket",
]
