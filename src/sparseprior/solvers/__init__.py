"""Learned sparse solvers (pillar 1): problems, classic solvers and Bayes-AMP, the LISTA family,
training.

::

    from sparseprior.solvers import FitConfig, ProblemConfig, SparseRecoveryProblem, fit_solver
    prob = SparseRecoveryProblem.generate(ProblemConfig())
    fitted = fit_solver("LISTA-CPSS", prob, FitConfig(budget="quick"))   # trained
    fitted = fit_solver("HyperLISTA", prob)                               # tuned
    fitted.model, fitted.kind, fitted.info["val_nmse_db"]

A new learned solver is one class plus :func:`register_solver` (docs/extending.md).
"""

from sparseprior.solvers.amp import AMPResult, bayes_amp
from sparseprior.solvers.classic import (
    ClassicResult,
    fista,
    ista,
    lasso_objective,
    soft_threshold,
)
from sparseprior.solvers.fit import (
    LEARNED_SOLVERS,
    FitConfig,
    FitResult,
    LearnedSolver,
    fit_solver,
    register_solver,
)
from sparseprior.solvers.metrics import (
    nmse_db,
    nmse_db_per_step,
    per_sample_nmse_db,
    support_recovery,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.refit import (
    bayes_refit,
    debias,
    least_squares_on_support,
    support_oracle_ls,
)
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
    "BUDGETS", "LEARNED_SOLVERS", "LISTA", "LISTA_CP", "LISTA_CPSS", "LISTA_SS", "SOLVERS",
    "AMPResult", "ClassicResult", "FitConfig", "FitResult", "LearnedSolver", "ProblemConfig",
    "SparseRecoveryProblem", "StagedTrainingConfig", "TiLISTA", "TrainingResult",
    "UnrolledSolver", "bayes_amp", "bayes_refit", "build_solver", "debias", "fista",
    "fit_solver", "ista",
    "lasso_objective", "least_squares_on_support", "load_solver", "nmse_db", "nmse_db_per_step",
    "per_sample_nmse_db",
    "register_solver", "save_solver", "soft_threshold", "support_oracle_ls", "support_recovery",
    "train_staged",
]
