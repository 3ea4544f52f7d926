"""The one report: sections -> ``report.md``, ``report.html`` and ``results.json``.

The report opens with what a reader needs to trust it: the run metadata (version, commit, torch,
CPU, threads, date, total time), a note on what the mode measures, the claims table (claim, the
seed's figure, target, measured, verdict, link to the section) and every flagged anomaly; then
one part per section. ``results.json`` is keyed by stable section keys and holds numbers (``null``
where a value was not reached or is not finite), never display strings in place of numbers.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from sparseprior.common.results import Claim, Section, format_table, format_value, table_columns
from sparseprior.common.runs import RunDir

__all__ = ["Claim", "Report", "Section", "format_table", "run_metadata"]

RESULTS_DOC = "docs/results.md"
MODE_NOTES = {
    "quick": ("Quick mode: small budgets (steps and epochs, never seconds) that check every "
              "pipeline end to end in under 10 minutes on a 2-core CPU. Its numbers are not the "
              f"measured claims: those use the full budgets and are listed, with the command "
              f"behind each, in {RESULTS_DOC}. A verdict here says whether this run meets the "
              "target at its own budget."),
    "full": (f"Full mode: the budgets behind the measured claims in {RESULTS_DOC}."),
}


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata(mode: str, device: str, seconds: float | None = None) -> dict[str, Any]:
    """Facts about this run that a reader needs to compare it with another."""
    import torch

    from sparseprior import __version__

    return {
        "sparseprior": __version__, "commit": _git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device, "mode": mode,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "total_seconds": None if seconds is None else round(seconds, 1),
    }


def _number_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _number_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_number_or_none(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _number_or_none(value.item())
    return value


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = table_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c, '')))}</td>" for c in cols)
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Report:
    """Collects sections and writes them into a run folder."""

    def __init__(self, title: str, run: RunDir, *, mode: str = "quick",
                 meta: dict[str, Any] | None = None) -> None:
        self.title = title
        self.run = run
        self.mode = mode
        self.meta: dict[str, Any] = dict(meta or {})
        self.sections: list[Section] = []

    def add(self, section: Section) -> None:
        self.sections.append(section)

    # -- the parts every rendering shares ------------------------------------------------------

    def claims(self) -> list[tuple[Section, Claim]]:
        return [(s, c) for s in self.sections for c in s.claims]

    def claim_rows(self, *, links: bool = True) -> list[dict[str, Any]]:
        rows = []
        for section, c in self.claims():
            measured = "not reached" if c.measured is None else \
                f"{format_value(c.measured)} {c.unit}".strip()
            rows.append({
                "claim": c.claim, "seed's figure": c.seed_figure or "—", "target": c.target,
                "measured": measured, "verdict": c.verdict,
                "section": f"[{section.title}](#{section.key})" if links else section.title,
            })
        return rows

    def flags(self) -> list[str]:
        return [f"{s.title}: {flag}" for s in self.sections for flag in s.flags]

    def verdict_counts(self) -> dict[str, int]:
        counts = {"met": 0, "NOT met": 0, "n/a": 0}
        for _, c in self.claims():
            counts[c.verdict] += 1
        return counts

    # -- renderings ------------------------------------------------------------------------------

    def markdown(self) -> str:
        parts = [f"# {self.title}", "", MODE_NOTES.get(self.mode, ""), ""]
        if self.meta:
            parts += ["## Run", "", format_table([{"field": k, "value": v}
                                                  for k, v in self.meta.items()]), ""]
        if self.claims():
            counts = self.verdict_counts()
            parts += ["## Claims", "", f"{counts['met']} met, {counts['NOT met']} not met, "
                      f"{counts['n/a']} not decided by this run.", "",
                      format_table(self.claim_rows()), ""]
        flags = self.flags()
        if flags:
            parts += ["## Flags", "", *[f"- **{f}**" for f in flags], ""]
        for s in self.sections:
            parts += [f"<a id='{s.key}'></a>", "", f"## {s.title}", ""]
            parts += [f"- **flag:** {f}" for f in s.flags]
            parts += [n + "\n" for n in s.notes]
            if s.rows:
                parts += [format_table(s.rows), ""]
            parts += [f"![{p}]({p})\n" for p in s.plots]
        return "\n".join(parts)

    def html(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}"
                 "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
                 "padding:3px 8px;text-align:right}img{max-width:100%}"
                 ".flag{color:#a00;font-weight:bold}.note{color:#444}")
        title = html.escape(self.title)
        parts = [f"<html><head><meta charset='utf-8'><title>{title}</title>"
                 f"<style>{style}</style></head><body><h1>{title}</h1>",
                 f"<p class='note'>{html.escape(MODE_NOTES.get(self.mode, ''))}</p>"]
        if self.meta:
            parts += ["<h2>Run</h2>", _html_table([{"field": k, "value": v}
                                                   for k, v in self.meta.items()])]
        if self.claims():
            rows = self.claim_rows(links=False)
            parts += ["<h2>Claims</h2>", _html_table(rows)]
        flags = self.flags()
        if flags:
            parts += ["<h2>Flags</h2>", "<ul>"]
            parts += [f"<li class='flag'>{html.escape(f)}</li>" for f in flags]
            parts.append("</ul>")
        for s in self.sections:
            parts.append(f"<h2 id='{html.escape(s.key)}'>{html.escape(s.title)}</h2>")
            parts += [f"<p class='flag'>flag: {html.escape(f)}</p>" for f in s.flags]
            parts += [f"<p>{html.escape(n)}</p>" for n in s.notes]
            parts.append(_html_table(s.rows))
            for p in s.plots:
                img = self.run.file(p)
                if img.exists():  # embed so the HTML file stands alone
                    b64 = base64.b64encode(Path(img).read_bytes()).decode()
                    parts.append(f"<img alt='{html.escape(p)}' src='data:image/png;base64,{b64}'>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def results(self) -> dict[str, Any]:
        """The machine-readable report: stable keys, numbers (``null`` when not finite)."""
        claims = []
        for section, c in self.claims():
            claims.append({**dataclasses.asdict(c), "verdict": c.verdict, "section": section.key})
        sections = {s.key: {"title": s.title, "rows": s.rows, "data": s.data, "plots": s.plots,
                            "notes": s.notes, "flags": s.flags} for s in self.sections}
        return _number_or_none({"title": self.title, "meta": self.meta, "claims": claims,
                                "flags": self.flags(), "sections": sections})

    def write(self) -> Path:
        """Write ``report.md``, ``report.html`` and ``results.json``; return the HTML path."""
        self.run.write_text("report.md", self.markdown())
        self.run.write_json("results.json", self.results())
        return self.run.write_text("report.html", self.html())
