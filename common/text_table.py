"""Plain-text tables and a redrawn live view for the command lines (probe, stream, fleetctl).

A few dozen lines instead of rich: rich and the pygments it brings were 9 MB of the device
install for tables that read as well in plain columns.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import TextIO

ELLIPSIS = "…"
_GAP = "  "


class TextTable:
    """Columns padded to their widest cell, two spaces apart; a title line above.

    `right` names the columns aligned right (numbers); `max_widths` caps a column, cutting a
    longer cell with an ellipsis."""

    def __init__(
        self,
        *columns: str,
        title: str = "",
        header: bool = True,
        right: Iterable[str] = (),
        max_widths: dict[str, int] | None = None,
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.header = header
        self.right = set(right)
        self.max_widths = dict(max_widths or {})
        self.rows: list[list[str]] = []

    def add_column(self, name: str, *, right: bool = False, max_width: int | None = None) -> None:
        self.columns.append(name)
        if right:
            self.right.add(name)
        if max_width is not None:
            self.max_widths[name] = max_width

    def add_row(self, *cells: object) -> None:
        row = [" ".join(str(cell).splitlines()) for cell in cells]
        if not self.columns:  # a table without a header: as many columns as the first row
            self.columns = [""] * len(row)
        row += [""] * (len(self.columns) - len(row))
        for index, name in enumerate(self.columns):
            limit = self.max_widths.get(name)
            if limit is not None and len(row[index]) > limit:
                row[index] = row[index][: limit - 1] + ELLIPSIS
        self.rows.append(row)

    def render(self) -> str:
        shown = [self.columns] if self.header else []
        widths = [
            max((len(row[index]) for row in [*shown, *self.rows]), default=0)
            for index in range(len(self.columns))
        ]
        lines = [self.title] if self.title else []
        for number, row in enumerate([*shown, *self.rows]):
            cells = [
                cell.rjust(width) if name in self.right else cell.ljust(width)
                for cell, width, name in zip(row, widths, self.columns, strict=True)
            ]
            lines.append(_GAP.join(cells).rstrip())
            if self.header and number == 0:
                lines.append(_GAP.join("-" * width for width in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def progress_bar(completed: int, total: int, width: int = 20) -> str:
    done = min(max(completed, 0), total) * width // max(total, 1)
    return "[" + "#" * done + "." * (width - done) + "]"


class LiveText:
    """Redraws a block of text in place on a terminal (ANSI cursor moves), as a live view.

    Lines are cut to the terminal's width so each takes one row and the redraw stays exact;
    `transient` erases the block when the view ends. Off a terminal (a pipe, a log) nothing is
    drawn until the end, then the last text once (unless transient)."""

    def __init__(self, stream: TextIO, *, transient: bool = False) -> None:
        self._stream = stream
        self._transient = transient
        self._terminal = stream.isatty()
        self._rows = 0
        self._last = ""

    def __enter__(self) -> LiveText:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._terminal and self._transient:
            self._erase()
        elif not self._terminal and not self._transient and self._last:
            self._stream.write(self._last + "\n")
        self._stream.flush()

    def update(self, text: str) -> None:
        self._last = text
        if not self._terminal:
            return
        width = shutil.get_terminal_size().columns
        lines = [line[: width - 1] + ELLIPSIS if len(line) > width else line
                 for line in text.splitlines()]  # fmt: skip
        self._erase()
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()
        self._rows = len(lines)

    def _erase(self) -> None:
        if self._rows:
            # Up to the block's first row, then clear to the end of the screen.
            self._stream.write(f"\x1b[{self._rows}F\x1b[J")
            self._rows = 0
