"""``sparseprior tickets ...``: lottery tickets (IMP with rewinding, Elastic LTH, Early-Bird)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Lottery tickets: IMP with rewinding, Elastic LTH, Early-Bird.",
                  no_args_is_help=True)
