"""``sparseprior reproduce``: run each pillar's headline experiment and write one report.

Each pillar registers its section functions ``fn(run: RunDir, mode: str, device) -> Section``
with :func:`sparseprior.common.results.register_section` in ``sparseprior/<pillar>/sections.py``;
this module discovers them, runs them in order and renders the report. Quick mode keeps the
whole command under 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sparseprior.common.progress import progress_bar
from sparseprior.common.results import Section, SectionSpec, discover_sections, format_table, slug
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice
from sparseprior.report.report import Report, run_metadata

log = logging.getLogger(__name__)

SectionFn = Callable[[RunDir, str, torch.device], Section]
MODES = ("quick", "full")


def section_names() -> list[str]:
    """Registered section names in report order (see ``sparseprior/<pillar>/sections.py``)."""
    return [spec.name for spec in discover_sections()]


class _Collect(logging.Handler):
    """Keeps the warnings a section logs (e.g. a dataset fallback) for its report part."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet_library(collect: _Collect) -> Iterator[None]:
    """Silence the library's INFO chatter (epoch dicts, stage lines); keep its warnings."""
    lib = logging.getLogger("sparseprior")
    level = lib.level
    lib.setLevel(logging.WARNING)
    lib.addHandler(collect)
    try:
        yield
    finally:
        lib.removeHandler(collect)
        lib.setLevel(level)


def _echo(text: str = "") -> None:
    print(text, flush=True)


def _run_section(spec: SectionSpec, run: RunDir, mode: str, device: torch.device,
                 index: str) -> Section:
    _echo(f"\n== [{index}] {spec.name}: {spec.summary} ==")
    collect = _Collect()
    start = time.perf_counter()
    with _quiet_library(collect), progress_bar() as progress:
        task = progress.add_task(spec.name, total=None, status="running")
        section = spec.fn(RunDir(run.path / spec.name), mode, device)
        progress.update(task, total=1, completed=1, status="done")
    seconds = time.perf_counter() - start
    section.key = section.key if section.key != slug(section.title) else spec.name
    section.plots = [f"{spec.name}/{p}" for p in section.plots]
    section.flags += [f"warning: {m}" for m in collect.messages if m not in section.flags]
    section.notes.append(f"Section wall time: {seconds:.1f} s (not part of any result).")
    verdicts = ", ".join(f"{c.key.split('.')[-1]}: {c.verdict}" for c in section.claims)
    _echo(f"   done in {seconds:.1f} s" + (f"; {verdicts}" if verdicts else ""))
    for flag in section.flags:
        _echo(f"   FLAG: {flag}")
    return section


def _summary(report: Report, path: Path) -> None:
    _echo("\n== summary ==")
    rows = report.claim_rows(links=False)
    if rows:
        _echo(format_table([{k: r[k] for k in ("claim", "target", "measured", "verdict")}
                            for r in rows]))
    counts = report.verdict_counts()
    _echo(f"claims: {counts['met']} met, {counts['NOT met']} not met, {counts['n/a']} n/a; "
          f"flags: {len(report.flags())}")
    if report.mode == "quick":
        _echo("quick mode: small budgets; the measured claims are in docs/results.md")
    _echo(f"report: {path}")


def default_out(mode: str) -> Path:
    """``runs/reproduce`` for quick mode, ``runs/reproduce-<mode>`` otherwise."""
    return Path("runs/reproduce") if mode == "quick" else Path(f"runs/reproduce-{mode}")


def reproduce(out: str | Path | None = None, mode: str = "quick",
              only: list[str] | None = None, device: torch.device | None = None) -> Path:
    """Run the selected sections (all by default) and write the report; return its HTML path.

    Prints one header and one progress line per section and a closing summary with the
    verdicts; the library's INFO logging is silenced while sections run (warnings are kept and
    shown as flags in the report).
    """
    check_choice(mode, "mode", MODES)
    specs = {spec.name: spec for spec in discover_sections()}
    names = list(dict.fromkeys(only or list(specs)))
    for name in names:
        check_choice(name, "section", tuple(specs))
    device = device or torch.device("cpu")
    run = RunDir(default_out(mode) if out is None else out)
    run.claim({"mode": mode, "sections": names, "device": str(device)},
              may_differ=("sections", "device"), kind=f"report (of another mode than {mode!r})")
    report = Report(f"sparseprior reproduce ({mode})", run, mode=mode,
                    meta=run_metadata(mode, str(device)))
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        report.add(_run_section(specs[name], run, mode, device, f"{i}/{len(names)}"))
        report.meta["total_seconds"] = round(time.perf_counter() - start, 1)
        report.write()  # a partial report survives an interruption
    path = report.write()
    _summary(report, path)
    return path
