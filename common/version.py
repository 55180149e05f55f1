"""The edgefleet build version, read once from the installed distribution's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:  # a source tree run without `pip install`
        return "0+unknown"


EDGEFLEET_VERSION = _installed_version()
