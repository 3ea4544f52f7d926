"""``sparseprior reproduce``: run each pillar's headline experiment and write one report.

Each pillar registers a section function ``fn(run: RunDir, mode: str, device) -> Section`` in
:data:`SECTIONS` (as ``"module:function"``); quick mode keeps the whole command under 10 minutes
on a 2-core CPU.
"""

from __future__ import annotations

import importlib
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


# Section name -> "module:function", in report order; imported only when run (fast CLI start).
SECTIONS: dict[str, str] = {
    "solvers": "sparseprior.solvers.headline:solvers_section",
    "tickets": "sparseprior.tickets.experiments:tickets_section",
    "earlybird": "sparseprior.tickets.earlybird:earlybird_section",
    "dst": "sparseprior.dst.experiments:dst_section",
    "compress": "sparseprior.compress.experiments:compress_section",
}


def _load(name: str) -> SectionFn:
    module, function = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), function)


def reproduce(out: str | Path = "runs/reproduce", mode: str = "quick",
              only: list[str] | None = None, device: torch.device | None = None) -> Path:
    """Run the selected sections (all by default) and write the report; return its HTML path."""
    check_choice(mode, "mode", MODES)
    names = only or list(SECTIONS)
    for name in names:
        check_choice(name, "section", SECTIONS)
    run = RunDir(out)
    run.write_json("config.json", {"mode": mode, "sections": names,
                                   "device": str(device or "cpu")})
    report = Report(f"sparseprior reproduce ({mode})", run)
    for name in names:
        start = time.perf_counter()
        section = _load(name)(RunDir(run.path / name), mode, device or torch.device("cpu"))
        section.plots = [f"{name}/{p}" for p in section.plots]
        section.notes.append(f"Section wall time: {time.perf_counter() - start:.1f} s.")
        report.add(section)
        report.write()  # partial report survives an interruption
    return report.write()
