"""Report sections -> ``report.md``, ``report.html`` and ``results.json`` in a run folder."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from sparseprior.common.results import Claim, Section, format_table, format_value, table_columns
from sparseprior.common.runs import RunDir

__all__ = ["Claim", "Report", "Section", "format_table"]


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

    def __init__(self, title: str, run: RunDir) -> None:
        self.title = title
        self.run = run
        self.sections: list[Section] = []

    def add(self, section: Section) -> None:
        self.sections.append(section)

    def markdown(self) -> str:
        parts = [f"# {self.title}", ""]
        for s in self.sections:
            parts += [f"## {s.title}", ""]
            parts += [n + "\n" for n in s.notes]
            if s.rows:
                parts += [format_table(s.rows), ""]
            parts += [f"![{p}]({p})\n" for p in s.plots]
        return "\n".join(parts)

    def html(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}"
                 "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:right}img{max-width:100%}")
        parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                 f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for s in self.sections:
            parts.append(f"<h2>{html.escape(s.title)}</h2>")
            parts += [f"<p>{html.escape(n)}</p>" for n in s.notes]
            parts.append(_html_table(s.rows))
            for p in s.plots:
                img = self.run.file(p)
                if img.exists():  # embed so the HTML file stands alone
                    b64 = base64.b64encode(Path(img).read_bytes()).decode()
                    parts.append(f"<img alt='{html.escape(p)}' src='data:image/png;base64,{b64}'>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self) -> Path:
        """Write ``report.md``, ``report.html`` and ``results.json``; return the HTML path."""
        self.run.write_text("report.md", self.markdown())
        self.run.write_json("results.json", {
            s.title: {"rows": s.rows, "data": s.data, "plots": s.plots, "notes": s.notes}
            for s in self.sections})
        return self.run.write_text("report.html", self.html())
