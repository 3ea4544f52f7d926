"""``sparseprior compress ...``: pruning + quantization + factorization, packed files, latency."""

from __future__ import annotations

import typer

app = typer.Typer(help="Compression: prune, quantize, factorize; pack to a real file; measure.",
                  no_args_is_help=True)
