"""``python -m sparseprior.cli``."""

from sparseprior.cli import main

main()
