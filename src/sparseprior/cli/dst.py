"""``sparseprior dst ...``: dynamic sparse training (SET, RigL, GraNet, static baseline)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Dynamic sparse training: SET, RigL, GraNet, static sparse baseline.",
                  no_args_is_help=True)
