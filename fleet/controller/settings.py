"""Typed controller settings, built once by `edgefleet controller` (flags over env), passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_CONTROLLER_", frozen=True, extra="forbid"
    )

    data_dir: Path = Path("fleet-data")
    # "sqlite" (data_dir/controller.db, one machine) or postgresql://USER@HOST:PORT/DB.
    store: str = "sqlite"
    # The PostgreSQL password: a file, or EDGEFLEET_CONTROLLER_STORE_PASSWORD (libpq's
    # PGPASSWORD and PGPASSFILE work too). Never part of `store`, which is logged.
    store_password_file: Path | None = None
    store_password: SecretStr | None = None
    # SQLite: how long a write waits for another writer before it fails (and is retried).
    store_busy_timeout_s: float = Field(default=5.0, gt=0)
    host: str = "127.0.0.1"
    # Agents and fleetctl, mutual TLS. 0 picks a free port (tests).
    port: int = Field(default=7443, ge=0, le=65535)
    # Enrollment only: server-authenticated TLS for devices that have no certificate yet.
    enroll_port: int = Field(default=7444, ge=0, le=65535)
    # The operator dashboard (HTTPS, admin token); -1 disables it, 0 picks a free port.
    dashboard_port: int = Field(default=-1, ge=-1, le=65535)
    # Prometheus endpoint; -1 disables it.
    metrics_port: int = Field(default=9443, ge=-1, le=65535)
    # Names and addresses the server certificate is valid for.
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    # Public keys (files or directories of *.pub) a bundle must be signed by to be uploaded.
    trusted_keys: tuple[Path, ...] = ()
    token_ttl_s: float = Field(default=24 * 3600, gt=0)
    telemetry_interval_s: float = Field(default=10.0, gt=0)
    # A connected device silent for this many telemetry intervals shows as offline.
    offline_after_intervals: float = Field(default=3.0, ge=1)
    # Telemetry samples kept in memory per device for gate windows.
    samples_per_device: int = Field(default=360, ge=2)
    telemetry_flush_s: float = Field(default=1.0, gt=0)
    # Rows waiting for the store; beyond this the oldest are dropped (and counted).
    telemetry_buffer_rows: int = Field(default=100_000, ge=1)
    telemetry_retention_s: float = Field(default=7 * 24 * 3600, gt=0)
    download_chunk_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)
    # An HTTP origin directory (served by nginx, a CDN...): every verified bundle upload is also
    # published there as <sha256>.efb, for agents that list its URL as a bundle source.
    publish_dir: Path | None = None
    max_bundle_bytes: int = Field(default=2 * 1024**3, ge=1024)
    # How often a rollout re-checks installs while it waits (wakes early on every report).
    rollout_tick_s: float = Field(default=1.0, gt=0)
    # Replicas: a rollout's driver holds its lease this long and renews it every third of it;
    # when the driving replica dies another takes the rollout over within this time.
    lease_ttl_s: float = Field(default=10.0, gt=0)
    # This replica's name in leases and logs; "" makes one from the host name and process id.
    replica_name: str = ""
    # The CA (ca.pem, ca.key) every replica of a fleet shares: a directory they all mount, or
    # the same files copied to each. None: data_dir/pki (one machine). The store records the
    # CA's fingerprint and a replica holding another CA refuses to start.
    ca_dir: Path | None = None
    # URLs every rollout event is POSTed to as JSON (fleet/controller/webhooks.py).
    webhook_urls: tuple[str, ...] = ()
    # Hosts a rollout's own webhook URL (fleetctl deploy --webhook) may name: fnmatch patterns
    # against host and host:port ("hooks.example.com", "*.example.com", "10.0.0.7:8080").
    # Empty: only the hosts of `webhook_urls`.
    webhook_allow: tuple[str, ...] = ()
    # A receiver's queue and sender go away after this long without events.
    webhook_idle_s: float = Field(default=600.0, gt=0)
    # Events waiting per receiver; beyond this new ones are dropped (and counted).
    webhook_queue_size: int = Field(default=1000, ge=1)
    webhook_attempts: int = Field(default=8, ge=1)
    # First retry after this long, doubling each time (at most 60 s between attempts).
    webhook_backoff_s: float = Field(default=1.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Signs every delivery: X-Edgefleet-Signature: sha256=HMAC-SHA256(secret, body), hex. A
    # file, or EDGEFLEET_CONTROLLER_WEBHOOK_SECRET.
    webhook_secret_file: Path | None = None
    webhook_secret: SecretStr | None = None
    # Seconds SIGTERM waits for in-flight RPCs.
    shutdown_grace_s: float = Field(default=2.0, ge=0)
    log_level: str = "INFO"

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {url!r} must be an http:// or https:// URL")
        return value

    @field_validator("store")
    @classmethod
    def _store_address(cls, value: str) -> str:
        if value == "sqlite":
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("store must be 'sqlite' or postgresql://USER@HOST:PORT/DB")
        userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo or "password=" in value:
            # The error must not echo the address: it holds a secret.
            raise ValueError(
                "put the PostgreSQL password in --store-password-file or "
                "EDGEFLEET_CONTROLLER_STORE_PASSWORD, not in the store address (it is logged)"
            )
        return value
