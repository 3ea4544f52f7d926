"""Progress bars that turn themselves off when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(enabled: bool | None = None) -> Iterator[Progress]:
    """A rich ``Progress`` (use ``add_task``/``advance``/``update``).

    ``enabled=None`` shows it only when stderr is a TTY, so logs and CI stay clean.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    with progress:
        yield progress
