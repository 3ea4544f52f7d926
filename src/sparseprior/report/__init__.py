"""The one report: sections with a table, plots and notes, written as Markdown, HTML and JSON."""

from sparseprior.report.report import Report, Section, format_table

__all__ = ["Report", "Section", "format_table"]
