"""The one reporter of every benchmark: a table on the console (rich, or markdown) and an MLflow run.

A benchmark returns a ``Report`` (its rows, the title, the lines to print under the table, the params and
metrics to log); ``publish`` prints it and, unless told not to, logs it to an MLflow run tagged
``bench=<name>``: the params, the metrics, and the rows as the table artifact ``bench_<name>.json``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from opensora_core import tracking

MISSING = "-"  # a cell of a column that a row does not have


@dataclass
class Report:
    """What one benchmark run found, and how it is shown and logged."""

    name: str  # tags.bench, the artifact bench_<name>.json and the default run name bench-<name>
    title: str
    rows: list[dict[str, Any]]
    left: tuple[str, ...] = ()  # text columns, left-aligned (numbers are right-aligned)
    lines: list[str] = field(default_factory=list)  # printed under the table
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # besides bench=<name>
    run_name: str | None = None
    stage: str | None = None  # the stage the run belongs to (tracking's stage tag)


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row))


def rich_table(title: str, rows: list[dict[str, Any]], left: tuple[str, ...] = ()) -> Table:
    """A rich table with one column per key of the rows."""
    table = Table(title=title)
    keys = columns(rows)
    for col in keys:
        table.add_column(col, justify="left" if col in left else "right")
    for row in rows:
        table.add_row(*(str(row.get(col, MISSING)) for col in keys))
    return table


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (for docs/results.md)."""
    keys = columns(rows)
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(str(row.get(col, MISSING)) for col in keys) + " |" for row in rows]
    return "\n".join(lines)


def wide_console() -> Console:
    """A console at least 200 columns wide: benchmark tables are wide and must never wrap."""
    return Console(width=max(Console().width, 200))


def show(report: Report, console: Console, markdown: bool = False) -> None:
    """Print the table (rich or markdown) and the lines under it."""
    if markdown:
        console.print(f"**{report.title}**\n\n{markdown_table(report.rows)}", markup=False, highlight=False)
    else:
        console.print(rich_table(report.title, report.rows, report.left))
    for line in report.lines:
        console.print(line)


def log_to_mlflow(report: Report, cfg) -> str:
    """Log the report to a new MLflow run of ``cfg``'s tracking setup; returns the run id."""
    import mlflow  # heavy: only when a run is logged

    tags = {"bench": report.name, **report.tags}
    with tracking.start_run(cfg, run_name=report.run_name or f"bench-{report.name}", stage=report.stage, tags=tags,
                            log_config=False) as run:
        if report.params:
            mlflow.log_params(report.params)
        if report.metrics:
            mlflow.log_metrics(report.metrics)
        tracking.log_table(f"bench_{report.name}", report.rows)
    return run.info.run_id


def publish(report: Report, cfg, console: Console | None = None, track: bool = True, markdown: bool = False) -> str | None:
    """Print the report; with ``track``, log it to MLflow and say which run. Returns the run id (or None)."""
    console = console or wide_console()
    show(report, console, markdown)
    if not track:
        return None
    run_id = log_to_mlflow(report, cfg)
    console.print(f"logged to MLflow run {run_id}")
    return run_id


def median_spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """"median (min-max)" of ``values`` times ``scale``, e.g. seconds to ms with scale 1000."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"
