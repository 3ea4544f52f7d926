"""``sparseprior reproduce``: run each pillar's headline experiment and write one report.

Each pillar registers a section function ``fn(run: RunDir, mode: str, device) -> Section`` in
:data:`SECTIONS`; quick mode keeps the whole command under 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.report.report import Report, Section

log = logging.getLogger(__name__)

SectionFn = Callable[[RunDir, str, torch.device], Section]
MODES = ("quick", "full")


def _registry() -> dict[str, SectionFn]:
    """Sections by name, in report order (imported lazily so the CLI starts fast)."""
    from sparseprior.solvers.experiments import solvers_section
    from sparseprior.tickets.earlybird import earlybird_section
    from sparseprior.tickets.experiments import tickets_section

    return {"solvers": solvers_section, "tickets": tickets_section,
            "earlybird": earlybird_section}


def reproduce(out: str | Path = "runs/reproduce", mode: str = "quick",
              only: list[str] | None = None, device: torch.device | None = None) -> Path:
    """Run the selected sections (all by default) and write the report; return its HTML path."""
    check_choice(mode, "mode", MODES)
    registry = _registry()
    names = only or list(registry)
    for name in names:
        check_choice(name, "section", registry)
    run = RunDir(out)
    run.write_json("config.json", {"mode": mode, "sections": names,
                                   "device": str(device or "cpu")})
    report = Report(f"sparseprior reproduce ({mode})", run)
    for name in names:
        start = time.perf_counter()
        section = registry[name](RunDir(run.path / name), mode, device or torch.device("cpu"))
        section.plots = [f"{name}/{p}" for p in section.plots]
        section.notes.append(f"Section wall time: {time.perf_counter() - start:.1f} s.")
        report.add(section)
        report.write()  # partial report survives an interruption
    return report.write()
