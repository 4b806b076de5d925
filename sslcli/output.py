"""What the commands print: one JSON object on stdout with --json, tables and messages on stderr."""

from __future__ import annotations

import json
import os
import sys


def quiet() -> bool:
    """Whether this is a process other than rank 0 of a torchrun launch, which prints nothing."""
    return os.environ.get("RANK", "0") != "0"


def stderr():
    """A rich console on stderr (imported when first used, so `--help` stays quick)."""
    from rich.console import Console

    return Console(file=open(os.devnull, "w")) if quiet() else Console(stderr=True)


def emit(result: dict, as_json: bool) -> None:
    if as_json and not quiet():
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def table(title: str, columns: dict[str, str], rows: list[dict]) -> None:
    """A rich table of `columns` (field -> heading) on stderr."""
    from rich.table import Table

    grid = Table(title=title)
    for heading in columns.values():
        grid.add_column(heading)
    for row in rows:
        grid.add_row(*(f"{row[f]:.4g}" if isinstance(row[f], float) else str(row[f]) for f in columns))
    stderr().print(grid)


def listing(title: str, columns: dict[str, str], rows: list[dict], key: str, as_json: bool) -> None:
    """`rows` as one JSON object under `key`, or as a table."""
    if as_json:
        emit({key: rows}, True)
    else:
        table(title, columns, rows)
