"""Fleet domain errors. No transport here: `fleet.grpc_status` maps them to gRPC codes."""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error the fleet raises on purpose; its message is safe to show a caller."""


class BundleRejected(FleetError):
    """A bundle failed verification: unsigned, untrusted key, tampered, truncated or unsafe."""


class NotFound(FleetError):
    """No such device, bundle, rollout or token."""


class InvalidRequest(FleetError):
    """A request the controller cannot act on: bad selector, bad gate, bad steps."""


class PermissionDenied(FleetError):
    """The caller is authenticated but not allowed: a device on the admin API, a used token."""


class Conflict(FleetError):
    """The request clashes with the current state: promoting a finished rollout, ..."""
