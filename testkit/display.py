"""What the client's rich tables look like on a console, as text tests can search."""

from __future__ import annotations

from rich.console import Console


def render(table: object) -> str:
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()
