"""sparseprior: sparsity as a prior for efficient deep learning.

Three pillars: learned sparse solvers (:mod:`sparseprior.solvers`), compression
(:mod:`sparseprior.compress`) and sparse neural networks (:mod:`sparseprior.sparsity`,
:mod:`sparseprior.tickets`, :mod:`sparseprior.dst`).
"""

__version__ = "0.2.0"
