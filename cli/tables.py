"""Tables more than one command prints, built in one place so they read the same everywhere."""

from __future__ import annotations

from rich.table import Table


def metrics_table(table: Table, rows) -> Table:
    """The metric rows of a task's results (``Task.report_rows``: name, percent, n): the same columns in `mad eval`
    and `mad score`."""
    table.add_column("metric")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("n", justify="right")
    for name, value, n in rows:
        table.add_row(name, f"{value:.2f}", "" if n is None else str(n))
    return table
