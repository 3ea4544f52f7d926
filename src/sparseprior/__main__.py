"""``python -m sparseprior``."""

from sparseprior.cli import main

main()
