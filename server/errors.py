"""Domain errors. They carry meaning, not transport: `server.grpc_api.status` maps them to codes."""

from __future__ import annotations

from pathlib import Path


class EdgeError(Exception):
    """Base of every error the core raises on purpose; its message is safe to show a client."""


class ModelNotFound(EdgeError):
    """No such model, or no such version of it."""


class ModelNotReady(EdgeError):
    """The model exists but is not loaded (yet, or any more)."""


class InvalidInput(EdgeError):
    """A request or frame the model cannot take: shape, dtype, byte length, encoding."""


class Overloaded(EdgeError):
    """A bounded queue is full; the caller should back off."""


class ModelLoadError(EdgeError):
    """A model could not be loaded: corrupt file, checksum mismatch, bad manifest."""


class InvalidManifest(ModelLoadError):
    """The manifest is missing, unreadable or inconsistent with the files beside it."""


class Unsupported(EdgeError):
    """A feature edgefleet deliberately does not offer (shared memory, ...)."""


class Unauthenticated(EdgeError):
    """Missing or wrong credentials."""


class ShuttingDown(EdgeError):
    """The server is draining and takes no new work."""


class PlanRefused(EdgeError):
    """The hardware planner cannot fit the model on this device; the message names the numbers."""


class StartupError(EdgeError):
    """The server cannot start as configured; the message is one line for the operator."""


class RepositoryMissing(StartupError):
    """The model repository directory does not exist (or is not a directory)."""


class PortInUse(StartupError):
    """The gRPC or metrics port cannot be bound."""


class RequiredModelFailed(StartupError):
    """A model named on the command line is not in the repository or failed to load."""


def first_line(error: BaseException, *paths: Path, limit: int = 300) -> str:
    """The first line of a runtime's error, fit for a client: server paths become file names."""
    text = (str(error).splitlines() or [""])[0]
    for path in paths:
        text = text.replace(str(path), path.name).replace(str(path.parent), path.parent.name)
    return text[:limit]
