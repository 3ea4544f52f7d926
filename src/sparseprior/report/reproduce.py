"""``sparseprior reproduce``: run each pillar's headline experiment and write one report.

Each pillar registers its section functions ``fn(run: RunDir, mode: str, device) -> Section``
with :func:`sparseprior.common.results.register_section` in ``sparseprior/<pillar>/sections.py``;
this module discovers them, runs them in order and renders the report. Quick mode keeps the
whole command under 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparseprior.common.results import Section, discover_sections
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.report.report import Report

log = logging.getLogger(__name__)

SectionFn = Callable[[RunDir, str, torch.device], Section]
MODES = ("quick", "full")


def section_names() -> list[str]:
    """Registered section names in report order (see ``sparseprior/<pillar>/sections.py``)."""
    return [spec.name for spec in discover_sections()]


def reproduce(out: str | Path = "runs/reproduce", mode: str = "quick",
              only: list[str] | None = None, device: torch.device | None = None) -> Path:
    """Run the selected sections (all by default) and write the report; return its HTML path."""
    check_choice(mode, "mode", MODES)
    specs = {spec.name: spec for spec in discover_sections()}
    names = only or list(specs)
    for name in names:
        check_choice(name, "section", tuple(specs))
    run = RunDir(out)
    run.write_json("config.json", {"mode": mode, "sections": names,
                                   "device": str(device or "cpu")})
    report = Report(f"sparseprior reproduce ({mode})", run)
    for name in names:
        start = time.perf_counter()
        section = specs[name].fn(RunDir(run.path / name), mode, device or torch.device("cpu"))
        section.plots = [f"{name}/{p}" for p in section.plots]
        section.notes.append(f"Section wall time: {time.perf_counter() - start:.1f} s.")
        report.add(section)
        report.write()  # partial report survives an interruption
    return report.write()
