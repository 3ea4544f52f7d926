"""Plain result records that pillars return, and the registry of ``reproduce`` sections.

Pillars never import ``sparseprior.report``: they return :class:`Section` objects (numbers,
tables, plot file names, claims) and register the function that makes them with
:func:`register_section`; ``report/`` renders them to Markdown, HTML and ``results.json``.

A pillar exposes its sections in a module ``sparseprior.<pillar>.sections`` (importing it
registers them); :func:`discover_sections` imports every such module, so a new pillar adds a
section by adding that one file.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import pkgutil
import re
from collections.abc import Callable
from typing import Any

from sparseprior.common.registry import Registry


@dataclasses.dataclass
class Claim:
    """One checked claim: what was promised, the target, what was measured, the verdict.

    ``measured`` is a number or ``None`` ("not reached"/"not measured": say why in ``note``);
    ``passed`` is ``None`` when the run does not decide the claim (e.g. quick mode).
    """

    key: str                  # stable identifier, e.g. "solvers.hyperlista_vs_fista_iters"
    claim: str                # human text
    target: str               # e.g. ">= 20x", "<= -60 dB"
    measured: float | None
    unit: str = ""
    passed: bool | None = None
    seed_figure: str = ""     # the figure the project claimed before (docs/results.md)
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "n/a"}[self.passed]


@dataclasses.dataclass
class Section:
    """One block of results: a title, a table (list of row dicts), plots, notes and claims.

    ``key`` is the stable name used in ``results.json``; ``data`` holds raw numbers only.
    ``flags`` are anomalies the report must show prominently (e.g. a diverged solver).
    """

    title: str
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)  # file names in the run folder
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # raw numbers for JSON
    claims: list[Claim] = dataclasses.field(default_factory=list)
    flags: list[str] = dataclasses.field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = slug(self.title)


def slug(text: str) -> str:
    """``"Dynamic sparse training (quick)"`` -> ``"dynamic_sparse_training_quick"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    if value is None:
        return "—"
    return str(value)


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    return cols


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (columns in first-seen order)."""
    if not rows:
        return ""
    cols = table_columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_value(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# -- the section registry ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SectionSpec:
    """A registered ``reproduce`` section: ``fn(run, mode, device) -> Section``."""

    name: str
    fn: Callable[..., Section]
    order: int = 100
    summary: str = ""


SECTIONS: Registry[SectionSpec] = Registry("report section")


def register_section(name: str, *, order: int = 100, summary: str = "",
                     replace: bool = False) -> Callable:
    """Decorator: register ``fn(run: RunDir, mode: str, device: torch.device) -> Section``.

    ``order`` sorts sections in the report (lower first); ``summary`` is shown in CLI help.
    """

    def deco(fn: Callable[..., Section]) -> Callable[..., Section]:
        SECTIONS.register(name, SectionSpec(name, fn, order, summary), replace=replace)
        return fn

    return deco


def discover_sections() -> list[SectionSpec]:
    """Import every ``sparseprior.<pkg>.sections`` module; return the specs sorted by order."""
    import sparseprior

    for info in pkgutil.iter_modules(sparseprior.__path__):
        if not info.ispkg:
            continue
        name = f"sparseprior.{info.name}.sections"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return sorted((spec for _, spec in SECTIONS.items()), key=lambda s: (s.order, s.name))
