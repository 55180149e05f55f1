"""What the client's tables look like on a console, as text tests can search."""

from __future__ import annotations

from common.text_table import TextTable


def render(table: TextTable) -> str:
    return table.render()
