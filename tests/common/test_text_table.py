"""The plain-text tables and live view the command lines print (common/text_table.py)."""

from __future__ import annotations

import io

from common.text_table import LiveText, TextTable, progress_bar


def test_columns_line_up_numbers_align_right_and_long_cells_are_cut() -> None:
    table = TextTable("source", "fps", title="streams", right=("fps",), max_widths={"source": 8})
    table.add_row("pattern:64x48@30", "29.9")
    table.add_row("cam", "5.0")
    lines = table.render().splitlines()
    assert lines == [
        "streams",
        "source     fps",
        "--------  ----",
        "pattern…  29.9",
        "cam        5.0",
    ]


def test_a_table_without_a_header_takes_its_columns_from_the_first_row() -> None:
    table = TextTable(title="facts", header=False)
    table.add_row("cpu", "x86_64")
    table.add_row("memory", "total 2.00 GiB\nfree")  # a newline never breaks the row
    assert table.render().splitlines() == [
        "facts",
        "cpu     x86_64",
        "memory  total 2.00 GiB free",
    ]


def test_progress_bar_is_proportional_and_bounded() -> None:
    assert progress_bar(0, 4, width=8) == "[........]"
    assert progress_bar(2, 4, width=8) == "[####....]"
    assert progress_bar(9, 4, width=8) == "[########]"
    assert progress_bar(0, 0, width=4) == "[....]"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_text_redraws_in_place_on_a_terminal_and_erases_when_transient() -> None:
    screen = _Terminal()
    with LiveText(screen, transient=True) as live:
        live.update("a\nb")
        live.update("c")
    # The second draw moves up over the two rows of the first; the end erases the last one.
    assert screen.getvalue() == "a\nb\n\x1b[2F\x1b[Jc\n\x1b[1F\x1b[J"


def test_live_text_off_a_terminal_prints_the_last_view_once() -> None:
    pipe = io.StringIO()
    with LiveText(pipe) as live:
        live.update("first")
        live.update("last")
    assert pipe.getvalue() == "last\n"
