"""The ``history`` table: one row per run the migration ledger recorded."""

from __future__ import annotations

import datetime as dt

from rich.console import Console
from rich.table import Table
from rich.text import Text

from redismigrate.ledger import LedgerEntry

_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "refused": "magenta",
    "running": "cyan",
    "unfinished": "bold red",
}


def _when(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("+00:00")


def _took(entry: LedgerEntry) -> str:
    if entry.finished_at is None:
        return ""
    try:
        start = dt.datetime.fromisoformat(entry.started_at)
        end = dt.datetime.fromisoformat(entry.finished_at)
    except ValueError:
        return ""
    return f"{(end - start).total_seconds():.0f} s"


def print_history(console: Console, entries: list[LedgerEntry], index_name: str | None) -> None:
    """A table of the runs, then each run's error or takeover note under its number."""
    where = f" on {index_name}" if index_name else ""
    table = Table(title=f"{len(entries)} run(s){where}, newest first (times UTC)")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("command", no_wrap=True)
    table.add_column("index", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("host / pid", overflow="fold")
    notes: list[str] = []
    for number, e in enumerate(entries, start=1):
        index = e.index_name if e.target_index is None else f"{e.index_name} -> {e.target_index}"
        table.add_row(
            str(number),
            _when(e.started_at),
            _took(e),
            e.command,
            Text(index),
            Text(e.status, style=_STYLES.get(e.status, "")),
            Text(f"{e.host} {e.pid}"),
        )
        notes += [f"#{number}: {note}" for note in (e.error, e.took_over) if note]
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
