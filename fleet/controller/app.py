"""The whole controller in-process: store, CA, the services (devices, telemetry, bundles,
desired state, rollouts), the mTLS and enrollment gRPC servers and the Prometheus endpoint.
`edgefleet controller` and the tests build it the same way."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry

from common.bearer import TokenCheck
from common.prometheus_http import instance_registry, start_metrics_http
from fleet.controller.api.authz import ServiceAuthorization
from fleet.controller.api.dashboard import ControllerView, Dashboard
from fleet.controller.api.grpc import AdminServicer, AgentServicer, EnrollmentServicer
from fleet.controller.api.sessions import DashboardSessions
from fleet.controller.audit import AuditLog
from fleet.controller.bundles import BundleService
from fleet.controller.desired import DesiredState
from fleet.controller.devices import DeviceRegistry
from fleet.controller.live import LiveFleet
from fleet.controller.metrics import FleetCollector
from fleet.controller.replication.changefeed import ChangeFeed
from fleet.controller.replication.inbound import InboundChanges
from fleet.controller.replication.replica import Replica
from fleet.controller.rollouts.engine import RolloutEngine
from fleet.controller.rollouts.verbs import RolloutVerbs
from fleet.controller.settings import ControllerSettings
from fleet.controller.store.factory import describe, is_postgres, open_store
from fleet.controller.store.postgres import PostgresStore
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import RolloutRecord
from fleet.controller.store.runner import StoreRunner
from fleet.controller.telemetry import TelemetryService
from fleet.controller.webhooks import WebhookSender, rollout_event
from fleet.grpc_status import Peer
from fleet.keys import TrustedKeys
from fleet.pki import ADMIN_PREFIX, CertificateAuthority
from protos.edgefleet.fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)
ADMIN_CREDENTIAL = "admin-credential.json"
# The scrape token for /metrics, for Prometheus' `credentials_file` (also in the credential).
METRICS_TOKEN = "metrics.token"
# Bundles travel in chunks well under this; uploads too.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class ControllerServices:
    """The controller's services, wired once; each transport is handed only what it uses."""

    store: StoreRunner
    live: LiveFleet
    audit: AuditLog
    devices: DeviceRegistry
    engine: RolloutEngine
    desired: DesiredState
    rollouts: RolloutVerbs
    telemetry: TelemetryService
    bundles: BundleService
    replica: Replica
    inbound: InboundChanges
    control: StoreRunner
    webhooks: WebhookSender

    @classmethod
    def build(
        cls,
        settings: ControllerSettings,
        store: Store,
        ca: CertificateAuthority,
        trusted_keys: TrustedKeys,
        registry: CollectorRegistry,
    ) -> ControllerServices:
        runner = StoreRunner(store)
        # Leases and change notes: their own store thread, never behind the agents' calls.
        control = StoreRunner(store, owns_store=False)
        replicated = is_postgres(settings.store)
        replica = Replica(control, _replica_name(settings), replicated, settings.lease_ttl_s)
        live = LiveFleet(
            settings.samples_per_device,
            settings.offline_after_intervals * settings.telemetry_interval_s,
            announce=replica.announce,
            # Another replica's telemetry reaches the store within a flush, and us within a
            # poll (replication/inbound.py): a device connected there is not offline before.
            remote_delay_s=2 * settings.telemetry_flush_s + 1.0,
        )
        audit = AuditLog(runner)
        devices = DeviceRegistry(runner, ca, live, audit, settings.token_ttl_s, replica)
        webhooks = WebhookSender(
            settings.webhook_urls,
            registry,
            queue_size=settings.webhook_queue_size,
            attempts=settings.webhook_attempts,
            backoff_s=settings.webhook_backoff_s,
            timeout_s=settings.webhook_timeout_s,
            secret=_webhook_secret(settings),
            allow=settings.webhook_allow,
            idle_s=settings.webhook_idle_s,
        )

        def decided(rollout: RolloutRecord, action: str, detail: dict[str, object]) -> None:
            webhooks.publish(rollout_event(rollout, action, detail), rollout.spec.webhook_url)

        engine = RolloutEngine(
            runner,
            live,
            live.wake,
            settings.rollout_tick_s,
            replica=replica.name,
            lease_ttl_s=settings.lease_ttl_s,
            announce=replica.announce,
            on_decision=decided,
            leases=control,
        )
        telemetry = TelemetryService(
            runner,
            live,
            devices,
            engine.signals,
            registry,
            buffer_rows=settings.telemetry_buffer_rows,
            flush_s=settings.telemetry_flush_s,
            retention_s=settings.telemetry_retention_s,
        )
        bundles = BundleService(
            runner,
            trusted_keys,
            audit,
            settings.data_dir,
            settings.max_bundle_bytes,
            settings.publish_dir,
        )
        registry.register(FleetCollector(devices, live, telemetry, engine, replica))
        return cls(
            store=runner,
            live=live,
            audit=audit,
            devices=devices,
            engine=engine,
            desired=DesiredState(runner, devices, engine.signals, live, audit),
            rollouts=RolloutVerbs(
                engine, runner, devices, audit, webhook_refusal=webhooks.targets.refusal
            ),
            telemetry=telemetry,
            bundles=bundles,
            replica=replica,
            # The other replicas' changes: devices and rollouts re-read, streams woken, their
            # devices' telemetry followed from the store.
            inbound=InboundChanges(
                replica, live, devices, engine, runner, poll_s=settings.telemetry_flush_s
            ),
            control=control,
            webhooks=webhooks,
        )

    async def start(self) -> None:
        self.replica.start()
        await self.bundles.start()
        await self.devices.start()
        await self.engine.start()
        self.telemetry.start()
        # Replicas: a roll call and the others' telemetry, so this one shows the whole fleet.
        self.inbound.start()

    async def stop(self) -> None:
        await self.engine.stop()
        await self.telemetry.stop()
        await self.inbound.stop()
        await self.replica.stop()
        await self.webhooks.stop()
        self.control.close()
        self.store.close()


def _replica_name(settings: ControllerSettings) -> str:
    """This replica's name in leases and logs. One controller per SQLite file keeps one name
    across restarts, so a restarted controller drives its rollouts at once."""
    if settings.replica_name:
        return settings.replica_name
    if not is_postgres(settings.store):
        return "sqlite"
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _webhook_secret(settings: ControllerSettings) -> bytes | None:
    if settings.webhook_secret_file is not None:
        return settings.webhook_secret_file.read_bytes().strip()
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value().encode()
    return None


def _authorization(devices: DeviceRegistry) -> ServiceAuthorization:
    """The admin API takes admin certificates only; the agent API enrolled devices whose key is
    not revoked only."""

    def admin(caller: Peer) -> str | None:
        if caller.common_name.startswith(ADMIN_PREFIX):
            return None
        return "the admin API needs an admin certificate"

    return ServiceAuthorization(
        {
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name: admin,
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name: devices.admission,
        }
    )


class ControllerApp:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.registry = instance_registry("controller")
        self.services: ControllerServices | None = None
        self._servers: list[grpc.aio.Server] = []
        self._metrics_server: Any = None
        self.port = 0
        self.enroll_port = 0
        self.metrics_port = 0
        self.dashboard: Dashboard | None = None
        self.dashboard_port = 0
        self._token: str | None = None
        self._metrics_token = ""
        self._feed: ChangeFeed | None = None

    @property
    def admin_credential_path(self) -> Path:
        return self.settings.data_dir / ADMIN_CREDENTIAL

    @property
    def metrics_token_path(self) -> Path:
        return self.settings.data_dir / METRICS_TOKEN

    async def start(self) -> int:
        settings = self.settings
        pki_dir = settings.data_dir / "pki"
        ca = await asyncio.to_thread(
            CertificateAuthority.load_or_create, settings.ca_dir or pki_dir
        )
        # Each replica has its own server key and certificate, issued by the shared CA.
        await asyncio.to_thread(pki_dir.mkdir, parents=True, exist_ok=True)
        key_pem, cert_pem = await asyncio.to_thread(
            ca.server_credentials, pki_dir, settings.hostnames
        )
        trusted = await asyncio.to_thread(TrustedKeys.from_paths, settings.trusted_keys)
        store = await asyncio.to_thread(open_store, settings)
        await asyncio.to_thread(_claim_ca, store, ca)
        services = ControllerServices.build(settings, store, ca, trusted, self.registry)
        if isinstance(store, PostgresStore):
            # Listen to the other replicas before acting
            # (fleet/controller/replication/changefeed.py).
            inbound = services.inbound
            self._feed = ChangeFeed(
                store.dsn, store.connect_kwargs, services.replica.name,
                inbound.on_change, inbound.resync,
            )  # fmt: skip
            await self._feed.start()
        await services.start()
        self.services = services

        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Agents behind NAT: keep idle streams alive through middleboxes.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        main = grpc.aio.server(options=options, interceptors=[_authorization(services.devices)])
        agent = AgentServicer(
            services.devices,
            services.desired,
            services.telemetry,
            services.bundles,
            services.live,
            telemetry_interval_s=settings.telemetry_interval_s,
            download_chunk_bytes=settings.download_chunk_bytes,
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, main)
        admin = AdminServicer(
            services.devices,
            services.desired,
            services.bundles,
            services.rollouts,
            services.engine.queries,
            services.telemetry,
            services.audit,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, main)
        mutual = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=ca.certificate_pem, require_client_auth=True
        )
        self.port = main.add_secure_port(f"{settings.host}:{settings.port}", mutual)
        enroll = grpc.aio.server(options=options)
        agent_pb2_grpc.add_EnrollmentServiceServicer_to_server(
            EnrollmentServicer(services.devices), enroll
        )
        server_only = grpc.ssl_server_credentials([(key_pem, cert_pem)])
        self.enroll_port = enroll.add_secure_port(
            f"{settings.host}:{settings.enroll_port}", server_only
        )
        self._servers = [main, enroll]
        for server in self._servers:
            await server.start()
        if settings.metrics_port >= 0:
            # A door like the others: HTTPS under the fleet CA, and a bearer token that only
            # reads metrics (device ids, models, versions), the same on every replica.
            metrics_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            metrics_tls.load_cert_chain(pki_dir / "server.pem", pki_dir / "server.key")
            self._metrics_token = ca.derived_secret("metrics-scrape").hex()
            await asyncio.to_thread(_write_private, self.metrics_token_path, self._metrics_token)
            self._metrics_server = start_metrics_http(
                settings.metrics_port,
                settings.host,
                self.registry,
                authorize=TokenCheck(self._metrics_token).refusal,
                ssl_context=metrics_tls,
            )
            self.metrics_port = self._metrics_server.server_port
        if settings.dashboard_port >= 0:
            token = await asyncio.to_thread(self._dashboard_token)
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(pki_dir / "server.pem", pki_dir / "server.key")
            view = ControllerView(
                services.devices,
                services.engine.queries,
                services.audit,
                services.live,
                services.rollouts,
                services.control,
            )
            # Sessions signed under a key every replica derives from the shared CA.
            sessions = DashboardSessions(ca.derived_secret("dashboard-session"))
            self.dashboard = Dashboard(view, token, sessions)
            self.dashboard_port = await self.dashboard.start(
                settings.host, settings.dashboard_port, tls
            )
        await asyncio.to_thread(self._write_admin_credential, ca)
        logger.info(
            "controller on %s:%d (mTLS), enrollment on :%d, data in %s, store %s",
            settings.host,
            self.port,
            self.enroll_port,
            settings.data_dir,
            describe(settings),
        )
        return self.port

    def _write_admin_credential(self, ca: CertificateAuthority) -> None:
        """fleetctl's credential: the CA to trust, an admin client certificate, the address."""
        path = self.admin_credential_path
        if path.exists():
            credential = json.loads(path.read_text())
        else:
            key_pem, cert_pem = ca.issue_client(ADMIN_PREFIX + "operator")
            credential = {"key_pem": key_pem.decode(), "certificate_pem": cert_pem.decode()}
        credential["ca_pem"] = ca.certificate_pem.decode()
        credential["address"] = f"{self.settings.hostnames[0]}:{self.port}"
        credential["enroll_address"] = f"{self.settings.hostnames[0]}:{self.enroll_port}"
        credential["metrics_port"] = self.metrics_port
        if self._metrics_token:
            credential["metrics_token"] = self._metrics_token
        if self.dashboard is not None:
            credential["dashboard_token"] = self._dashboard_token()
            host = self.settings.hostnames[0]
            credential["dashboard_url"] = f"https://{host}:{self.dashboard_port}/"
        _write_private(path, json.dumps(credential, indent=2))

    def _dashboard_token(self) -> str:
        """The dashboard's admin token: kept in the admin credential file (0600) across restarts."""
        if self._token is None:
            path = self.admin_credential_path
            stored = json.loads(path.read_text()).get("dashboard_token") if path.exists() else None
            self._token = stored or secrets.token_urlsafe(32)
        return self._token

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self.dashboard is not None:
            await self.dashboard.stop()
            self.dashboard = None
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self._servers = []
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self.services is not None:
            await self.services.stop()
            self.services = None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (0600 from creation on)."""
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    temporary.replace(path)


class WrongCertificateAuthority(RuntimeError):
    """This replica's CA is not the one the fleet's store records."""


def _claim_ca(store: Store, ca: CertificateAuthority) -> None:
    """Record the fleet CA's fingerprint in the store (the first controller), or check it: a
    replica started with another CA (a fresh data directory without the shared CA) would issue
    certificates the other replicas reject, so it refuses to start instead."""
    fingerprint = ca.certificate.fingerprint(hashes.SHA256()).hex()
    recorded = store.claim("ca_sha256", fingerprint)
    if recorded != fingerprint:
        store.close()
        raise WrongCertificateAuthority(
            f"this controller's CA ({fingerprint[:16]}) is not the fleet's ({recorded[:16]}): "
            "every replica must use the same CA files (--ca-dir)"
        )
