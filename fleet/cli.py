"""`edgefleet controller`: run the fleet controller until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from fleet.controller.settings import ControllerSettings

logger = logging.getLogger(__name__)


def register(app: click.Group) -> None:
    app.add_command(controller)


@click.command("controller")
@click.pass_context
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=Path("fleet-data"),
    help="State directory: SQLite store, CA, bundles.",
)
@click.option(
    "--store",
    default="sqlite",
    envvar="EDGEFLEET_CONTROLLER_STORE",
    show_envvar=True,
    help="sqlite (in --data, one machine) or postgresql://USER@HOST:PORT/DB (replicas). No password here: see --store-password-file.",
)
@click.option(
    "--store-password-file",
    type=click.Path(path_type=Path),
    default=None,
    envvar="EDGEFLEET_CONTROLLER_STORE_PASSWORD_FILE",
    show_envvar=True,
    help="File holding the PostgreSQL password (or set EDGEFLEET_CONTROLLER_STORE_PASSWORD, or libpq's PGPASSWORD/PGPASSFILE).",
)
@click.option("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 for every interface.")
@click.option(
    "--port", type=int, default=7443, help="Agent and admin port (mutual TLS); 0 picks one."
)
@click.option("--enroll-port", type=int, default=7444, help="Enrollment port (server TLS only).")
@click.option(
    "--metrics-port", type=int, default=9443, help="Prometheus /metrics port; -1 disables."
)
@click.option(
    "--dashboard-port",
    type=int,
    default=-1,
    help="Operator dashboard (HTTPS; sign in with dashboard_token from the admin credential); -1 disables.",
)
@click.option(
    "--hostname", multiple=True, help="Name or IP the server certificate covers (repeatable)."
)
@click.option(
    "--trusted-key",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Public key file or directory of *.pub a bundle must be signed by (repeatable).",
)
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The fleet CA (ca.pem, ca.key) all replicas share; default DATA/pki. The store records its fingerprint: a replica with another CA refuses to start.",
)
@click.option(
    "--lease-ttl-s",
    type=float,
    default=10.0,
    help="Replicas: a rollout's driving replica holds its lease this long; another takes over within it after a crash.",
)
@click.option(
    "--replica-name",
    default="",
    help="This replica's name in leases and logs (default host:pid:random).",
)
@click.option(
    "--publish-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="HTTP origin directory: every verified upload is also published there as <sha256>.efb for agents' --bundle-source.",
)
@click.option(
    "--webhook",
    multiple=True,
    help="URL every rollout event (wave started, verdict, paused, rolled back, succeeded) is POSTed to as JSON (repeatable).",
)
@click.option(
    "--webhook-allow",
    multiple=True,
    help="Host pattern a rollout's own webhook (fleetctl deploy --webhook) may name, against host and host:port: hooks.example.com, *.example.com, 10.0.0.7:8080 (repeatable). Without it only the --webhook hosts.",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(path_type=Path),
    default=None,
    envvar="EDGEFLEET_CONTROLLER_WEBHOOK_SECRET_FILE",
    show_envvar=True,
    help="File holding the secret every webhook delivery is signed with (X-Edgefleet-Signature: sha256=HMAC); or set EDGEFLEET_CONTROLLER_WEBHOOK_SECRET.",
)
@click.option(
    "--telemetry-interval-s",
    type=float,
    default=10.0,
    help="Seconds between agent telemetry samples.",
)
@click.option("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR.")
def controller(
    ctx: click.Context,
    data: Path,
    store: str,
    store_password_file: Path | None,
    host: str,
    port: int,
    enroll_port: int,
    metrics_port: int,
    dashboard_port: int,
    hostname: tuple[str, ...],
    trusted_key: tuple[Path, ...],
    ca_dir: Path | None,
    lease_ttl_s: float,
    replica_name: str,
    publish_dir: Path | None,
    webhook: tuple[str, ...],
    webhook_allow: tuple[str, ...],
    webhook_secret_file: Path | None,
    telemetry_interval_s: float,
    log_level: str,
) -> None:
    """Run the fleet controller: enrollment, device registry, bundles, rollouts, telemetry."""
    from pydantic import ValidationError

    from fleet.controller.settings import ControllerSettings

    # Only the flags given on the command line: every other setting comes from its
    # EDGEFLEET_CONTROLLER_* variable, else its default (model_validate would skip the env).
    renamed = {
        "data": "data_dir",
        "trusted_key": "trusted_keys",
        "hostname": "hostnames",
        "webhook": "webhook_urls",
    }
    values: dict[str, Any] = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if value is None or source is None or source.name == "DEFAULT":
            continue
        if name in ("trusted_key", "hostname", "webhook", "webhook_allow"):
            value = tuple(value)
        if name == "log_level":
            value = str(value).upper()
        values[renamed.get(name, name)] = value
    try:
        settings = ControllerSettings(**values)
    except ValidationError as error:
        # Only the messages: pydantic's full text repeats the input values.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise click.BadParameter(problems) from None
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.trusted_keys:
        logger.warning("no --trusted-key: every bundle upload will be refused")
    asyncio.run(_run(settings))


async def _run(settings: ControllerSettings) -> None:
    from fleet.controller.app import ControllerApp

    app = ControllerApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await app.start()
    logger.info("admin credential for fleetctl: %s", app.admin_credential_path)
    await stop.wait()
    await app.stop()
