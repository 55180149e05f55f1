"""`edgefleet controller`: run the fleet controller until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fleet.controller.settings import ControllerSettings

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("controller")(controller)


def controller(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="State directory: SQLite store, CA, bundles.")] = Path("fleet-data"),
    store: Annotated[str, typer.Option("--store", envvar="EDGEFLEET_CONTROLLER_STORE", help="sqlite (in --data, one machine) or postgresql://USER@HOST:PORT/DB (replicas). No password here: see --store-password-file.")] = "sqlite",
    store_password_file: Annotated[Path | None, typer.Option("--store-password-file", envvar="EDGEFLEET_CONTROLLER_STORE_PASSWORD_FILE", help="File holding the PostgreSQL password (or set EDGEFLEET_CONTROLLER_STORE_PASSWORD, or libpq's PGPASSWORD/PGPASSFILE).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Agent and admin port (mutual TLS); 0 picks one.")] = 7443,
    enroll_port: Annotated[int, typer.Option(help="Enrollment port (server TLS only).")] = 7444,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; -1 disables.")] = 9443,
    dashboard_port: Annotated[int, typer.Option(help="Operator dashboard (HTTPS; sign in with dashboard_token from the admin credential); -1 disables.")] = -1,
    hostname: Annotated[list[str] | None, typer.Option("--hostname", help="Name or IP the server certificate covers (repeatable).")] = None,
    trusted_key: Annotated[list[Path] | None, typer.Option("--trusted-key", help="Public key file or directory of *.pub a bundle must be signed by (repeatable).")] = None,
    ca_dir: Annotated[Path | None, typer.Option("--ca-dir", help="The fleet CA (ca.pem, ca.key) all replicas share; default DATA/pki. The store records its fingerprint: a replica with another CA refuses to start.")] = None,
    lease_ttl_s: Annotated[float, typer.Option("--lease-ttl-s", help="Replicas: a rollout's driving replica holds its lease this long; another takes over within it after a crash.")] = 10.0,
    replica_name: Annotated[str, typer.Option("--replica-name", help="This replica's name in leases and logs (default host:pid:random).")] = "",
    publish_dir: Annotated[Path | None, typer.Option("--publish-dir", help="HTTP origin directory: every verified upload is also published there as <sha256>.efb for agents' --bundle-source.")] = None,
    webhook: Annotated[list[str] | None, typer.Option("--webhook", help="URL every rollout event (wave started, verdict, paused, rolled back, succeeded) is POSTed to as JSON (repeatable).")] = None,
    webhook_allow: Annotated[list[str] | None, typer.Option("--webhook-allow", help="Host pattern a rollout's own webhook (fleetctl deploy --webhook) may name, against host and host:port: hooks.example.com, *.example.com, 10.0.0.7:8080 (repeatable). Without it only the --webhook hosts.")] = None,
    webhook_secret_file: Annotated[Path | None, typer.Option("--webhook-secret-file", envvar="EDGEFLEET_CONTROLLER_WEBHOOK_SECRET_FILE", help="File holding the secret every webhook delivery is signed with (X-Edgefleet-Signature: sha256=HMAC); or set EDGEFLEET_CONTROLLER_WEBHOOK_SECRET.")] = None,
    telemetry_interval_s: Annotated[float, typer.Option(help="Seconds between agent telemetry samples.")] = 10.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:  # fmt: skip
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
        raise typer.BadParameter(problems) from None
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
