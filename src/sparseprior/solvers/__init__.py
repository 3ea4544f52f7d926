"""Learned sparse solvers (pillar 1): problems, classic solvers, the LISTA family, training.

::

    from sparseprior.solvers import ProblemConfig, SparseRecoveryProblem, build_solver
    prob = SparseRecoveryProblem.generate(ProblemConfig())
    model = build_solver("LISTA-CPSS", prob.A, num_layers=16)
    train_staged(model, prob, BUDGETS["quick"])
"""

from sparseprior.solvers.classic import (
    ClassicResult,
    fista,
    ista,
    lasso_objective,
    soft_threshold,
    support_oracle_ls,
)
from sparseprior.solvers.metrics import (
    nmse_db,
    nmse_db_per_step,
    per_sample_nmse_db,
    support_recovery,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.training import (
    BUDGETS,
    StagedTrainingConfig,
    TrainingResult,
    train_staged,
)
from sparseprior.solvers.unrolled import (
    LISTA,
    LISTA_CP,
    LISTA_CPSS,
    LISTA_SS,
    SOLVERS,
    TiLISTA,
    UnrolledSolver,
    build_solver,
    load_solver,
    save_solver,
)

__all__ = [
    "BUDGETS", "LISTA", "LISTA_CP", "LISTA_CPSS", "LISTA_SS", "SOLVERS", "ClassicResult",
    "ProblemConfig", "SparseRecoveryProblem", "StagedTrainingConfig", "TiLISTA",
    "TrainingResult", "UnrolledSolver", "build_solver", "fista", "ista", "lasso_objective",
    "load_solver", "nmse_db", "nmse_db_per_step", "per_sample_nmse_db", "save_solver",
    "soft_threshold", "support_oracle_ls", "support_recovery", "train_staged",
]
