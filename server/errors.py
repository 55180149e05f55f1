"""Domain errors, each with the one status it answers as: a gRPC status code's name (so the
core imports no grpc; `server.grpc_api.status` turns it into the code) and the HTTP status the
KServe REST API uses (`server.http_api.kserve_http`). Unexpected errors answer INTERNAL/500."""

from __future__ import annotations

from pathlib import Path

# What a client sees instead of an unexpected error's own message.
INTERNAL_MESSAGE = "internal error (the server log has the details)"


class EdgeError(Exception):
    """Base of every error the core raises on purpose; its message is safe to show a client."""

    grpc_status = "INTERNAL"
    http_status = 500


class ModelNotFound(EdgeError):
    """No such model, or no such version of it."""

    grpc_status = "NOT_FOUND"
    http_status = 404


class ModelNotReady(EdgeError):
    """The model exists but is not loaded (yet, or any more)."""

    grpc_status = "UNAVAILABLE"
    http_status = 503


class ModelWorkerFailed(EdgeError):
    """The process running a model's code died or was killed during the request; the message
    names the model and whether its worker is being restarted or the version marked failed."""

    grpc_status = "UNAVAILABLE"
    http_status = 503


class ModelRunTimedOut(EdgeError):
    """A model's run passed the device's run time limit (EDGEFLEET_SANDBOX_RUN_TIMEOUT_S): a
    TorchScript worker was killed, an ONNX run stopped. The message names the model and the
    limit."""

    grpc_status = "DEADLINE_EXCEEDED"
    # The model's worker, not the client, was too slow: a gateway's timeout.
    http_status = 504


class InvalidInput(EdgeError):
    """A request or frame the model cannot take: shape, dtype, byte length, encoding."""

    grpc_status = "INVALID_ARGUMENT"
    http_status = 400


class Overloaded(EdgeError):
    """A bounded queue is full; the caller should back off."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429


class RequestTooLarge(EdgeError):
    """A request body over its endpoint's size limit (gRPC refuses big messages itself)."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 413


class RequestTimeout(EdgeError):
    """A client too slow to send its request body."""

    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 408


class DeadlineExceeded(EdgeError):
    """The request's own deadline (KServe's `timeout` parameter) passed before its answer."""

    grpc_status = "DEADLINE_EXCEEDED"
    # Triton answers an expired request timeout as unavailable (503).
    http_status = 503


class ModelLoadError(EdgeError):
    """A model could not be loaded: corrupt file, checksum mismatch, bad manifest."""

    grpc_status = "FAILED_PRECONDITION"
    http_status = 400


class InvalidManifest(ModelLoadError):
    """The manifest is missing, unreadable or inconsistent with the files beside it."""


class IncompatibleVersion(ModelLoadError):
    """A new version that would break what the serving version's clients rely on: another
    input or output signature, no camera frames while camera streams are open, or a smoke test
    on real input that fails. The serving version stays active."""


class MissingExtra(ModelLoadError):
    """A model needs a package this install does not have; the message names the extra that
    brings it (`pip install 'edgefleet[torchscript]'`)."""


class Unsupported(EdgeError):
    """A feature edgefleet deliberately does not offer (shared memory, ...)."""

    grpc_status = "UNIMPLEMENTED"
    http_status = 501


class Unauthenticated(EdgeError):
    """Missing or wrong credentials."""

    grpc_status = "UNAUTHENTICATED"
    http_status = 401


class ShuttingDown(EdgeError):
    """The server is draining and takes no new work."""

    grpc_status = "UNAVAILABLE"
    http_status = 503


class PlanRefused(EdgeError):
    """The hardware planner cannot fit the model on this device; the message names the numbers."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 507


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
