"""Typed agent settings, built once by `edgefleet serve --controller ...` and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", frozen=True, extra="forbid")

    # The controller's mutual-TLS address, HOST:PORT; replicas: several, comma-separated
    # ("a:7443,b:7443"). The agent connects to one and moves to the next when it fails.
    controller: str
    # Its enrollment address (several, comma-separated, one per controller); None: each
    # controller's host, port + 1.
    enroll_address: str | None = None
    # The controller CA to trust when enrolling; after enrollment the state directory holds it.
    controller_ca: Path | None = None
    # One-time token from `fleetctl enroll`; needed only until the device holds a certificate.
    enroll_token: str | None = None
    device_id: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    # Certificate, key, partial downloads and the telemetry buffer live here.
    state_dir: Path = Path("agent-state")
    # Public keys (files, or directories of *.pub) a bundle must be signed by.
    trusted_keys: tuple[Path, ...] = ()
    # None follows the controller's interval.
    telemetry_interval_s: float | None = Field(default=None, gt=0)
    # How often the agent compares each model's active version with the desired one and puts a
    # drifted one back (changed by hand, by a load on the server's own API).
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Samples kept while the controller is unreachable; beyond this the oldest are dropped.
    spool_max_samples: int = Field(default=10_000, ge=1)
    # HTTP base URLs serving `<sha256>.efb` (mirrors, then the origin), tried in order before
    # the controller; every download is checked against its sha256 and signature.
    bundle_sources: tuple[str, ...] = ()
    download_chunk_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)
    # Versions of a model kept on disk for instant local rollback (the active one included).
    keep_versions: int = Field(default=3, ge=2)
    # Quarantined (failed, rolled back, replaced) copies kept per model for forensics; cleanup
    # removes them before any good version.
    quarantine_kept: int = Field(default=1, ge=0)

    def controller_addresses(self) -> list[str]:
        return [address.strip() for address in self.controller.split(",") if address.strip()]

    def enroll_addresses(self) -> list[str]:
        if self.enroll_address:
            return [a.strip() for a in self.enroll_address.split(",") if a.strip()]
        addresses = []
        for controller in self.controller_addresses():
            host, _, port = controller.rpartition(":")
            addresses.append(f"{host}:{int(port) + 1}")
        return addresses

    def resolved_enroll_address(self, attempt: int = 0) -> str:
        """The enrollment address to try on `attempt` (round robin over the list)."""
        addresses = self.enroll_addresses()
        return addresses[attempt % len(addresses)]
