"""What every edgefleet command line shares (edgefleet, fleetctl): click groups that list
their commands in the order they were added, and show each option's default in --help."""

from __future__ import annotations

from typing import Any

import click

# Every option's help shows its default.
CONTEXT: dict[str, Any] = {"show_default": True}


class OrderedGroup(click.Group):
    """A group whose --help lists commands as registered (the everyday ones first), not
    alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)
