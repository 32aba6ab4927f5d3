"""The HTML report of a sweep: plots against strength, the Pareto front, the paper's table."""

from saesteer.report.build import build_report, markdown_tables, paper_table

__all__ = ["build_report", "markdown_tables", "paper_table"]
