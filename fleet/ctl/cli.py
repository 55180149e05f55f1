"""`fleetctl`: enroll devices, sign and ship model bundles, run and watch rollouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")
DEFAULT_CREDENTIAL = Path("fleet-data/admin-credential.json")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

app = typer.Typer(
    name="fleetctl",
    help="Operate an edgefleet fleet: devices, signed bundles, gated rollouts, telemetry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Bundle signing keys.", no_args_is_help=True)
rollout_app = typer.Typer(help="Watch and steer rollouts.", no_args_is_help=True)
bundles_app = typer.Typer(
    help="Signed bundles and the HTTP origin they ship from.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.add_typer(bundles_app, name="bundles")

Credential = Annotated[
    Path,
    typer.Option(
        "--credential",
        envvar="EDGEFLEET_FLEETCTL_CREDENTIAL",
        help="Admin credential written by the controller (<data>/admin-credential.json).",
    ),
]
Output = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="table (for people) or json (one style for every verb: see fleet/ctl/output.py).",
    ),
]


def parse_duration(text: str) -> float:
    """`10m`, `90s`, `1h`, `1.5` (seconds) -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 10m or 1h")
    return float(match[1]) * _UNITS[match[2]]


def parse_labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        for item in pair.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise typer.BadParameter(f"{item!r} must be key=value")
            labels[key.strip()] = value.strip()
    return labels


def _call(credential: Path, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run one admin action; turn gRPC failures into a one-line error and exit status 1."""
    import grpc

    from fleet.ctl.client import AdminClient, AdminCredential

    if not credential.is_file():
        typer.echo(f"fleetctl: no admin credential at {credential} (use --credential)", err=True)
        raise typer.Exit(2)

    async def run() -> T:
        async with AdminClient.connect(AdminCredential.load(credential)) as client:
            return await action(client)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        typer.echo(f"fleetctl: {error.code().name}: {error.details()}", err=True)
        raise typer.Exit(1) from None


def _console() -> Any:
    from rich.console import Console

    return Console()


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise typer.BadParameter("--output must be table or json")


def _plain(value: object) -> dict[str, Any]:
    from fleet.ctl.output import plain

    result: dict[str, Any] = plain(value)
    return result


def _json(value: object) -> None:
    from fleet.ctl.output import dumps

    typer.echo(dumps(value))


# keys and bundles
@keys_app.command("generate")
def keys_generate(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write NAME.key and NAME.pub.")] = Path("keys"),
    name: Annotated[str, typer.Option(help="Key name.")] = "release",
    output: Output = "table",
) -> None:  # fmt: skip
    """Generate an Ed25519 bundle signing key pair."""
    from fleet.keys import generate_keypair, key_id, load_public_key

    _check_output(output)
    try:
        private_path, public_path = generate_keypair(directory, name)
    except FileExistsError as error:
        typer.echo(f"fleetctl: {error}", err=True)
        raise typer.Exit(1) from None
    identifier = key_id(load_public_key(public_path))
    if output == "json":
        _json({"private_key": str(private_path), "public_key": str(public_path),
               "key_id": identifier})  # fmt: skip
        return
    typer.echo(f"private key {private_path} (keep it secret)")
    typer.echo(f"public key  {public_path} (give it to the controller and the devices)")
    typer.echo(f"key id      {identifier}")


@app.command("package")
def package(
    model_dir: Annotated[Path, typer.Argument(help="A model version directory with manifest.json.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version number to ship it as.")],
    key: Annotated[Path, typer.Option(help="Ed25519 private key.")] = Path("keys/release.key"),
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("bundles"),
    output: Output = "table",
) -> None:  # fmt: skip
    """Build a signed, content-addressed bundle from MODEL_DIR."""
    from fleet.bundle import build_bundle, sha256_path
    from fleet.keys import load_private_key

    _check_output(output)
    try:
        path = build_bundle(model_dir, name, version, load_private_key(key), out)
    except (ValueError, OSError) as error:
        typer.echo(f"fleetctl: {error}", err=True)
        raise typer.Exit(1) from None
    if output == "json":
        _json({"bundle": str(path), "model_name": name, "version": version,
               "bundle_sha256": sha256_path(path), "size": path.stat().st_size})  # fmt: skip
    else:
        typer.echo(str(path))


@bundles_app.command("publish")
def bundles_publish(
    bundle: Annotated[list[Path], typer.Argument(help="Signed bundles from `fleetctl package`.")],
    to: Annotated[Path, typer.Option("--to", help="The origin directory a web server or CDN serves; agents list its URL with --bundle-source.")],
    trusted_key: Annotated[list[Path], typer.Option("--trusted-key", help="Public key file or directory of *.pub a bundle must be signed by (repeatable).")],
    output: Output = "table",
) -> None:  # fmt: skip
    """Verify BUNDLEs and publish them to an HTTP origin directory as <sha256>.efb."""
    from fleet.errors import BundleRejected
    from fleet.keys import TrustedKeys
    from fleet.publish import verify_and_publish

    _check_output(output)
    published_all: list[dict[str, str]] = []
    try:
        trusted = TrustedKeys.from_paths(tuple(trusted_key))
        for path in bundle:
            digest, published = verify_and_publish(path, to, trusted)
            published_all.append({"bundle_sha256": digest, "path": str(published)})
            if output != "json":
                typer.echo(f"{digest}  {published}")
    except (BundleRejected, ValueError, OSError) as error:
        typer.echo(f"fleetctl: {error}", err=True)
        raise typer.Exit(1) from None
    if output == "json":
        _json(published_all)


# devices
@app.command("enroll")
def enroll(
    credential: Credential = DEFAULT_CREDENTIAL,
    labels: Annotated[list[str] | None, typer.Option("--labels", help="key=value[,key=value] for the device.")] = None,
    ttl: Annotated[str, typer.Option(help="Token lifetime, e.g. 1h.")] = "24h",
    output: Output = "table",
) -> None:  # fmt: skip
    """Issue a one-time enrollment token for a new device."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.CreateEnrollmentTokenRequest(
        labels=parse_labels(labels), ttl_s=parse_duration(ttl)
    )
    response = _call(credential, lambda c: c.stub.CreateEnrollmentToken(request))
    if output == "json":
        _json(response)
    else:
        typer.echo(response.token)


@app.command("devices")
def devices(
    credential: Credential = DEFAULT_CREDENTIAL,
    selector: Annotated[list[str] | None, typer.Option("--selector", help="key=value filters.")] = None,
    output: Output = "table",
) -> None:  # fmt: skip
    """Devices with desired vs actual version per model (version drift)."""
    from fleet.ctl.render import devices_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ListDevicesRequest(selector=parse_labels(selector))
    response = _call(credential, lambda c: c.stub.ListDevices(request))
    if output == "json":
        _json(list(response.devices))
    else:
        _console().print(devices_table(list(response.devices)))


async def _list_devices(client: Any) -> list[Any]:
    from protos.edgefleet.fleet.v1 import admin_pb2

    listed = await client.stub.ListDevices(admin_pb2.ListDevicesRequest())
    return list(listed.devices)


@app.command("top")
def top(
    credential: Credential = DEFAULT_CREDENTIAL,
    interval: Annotated[float, typer.Option(help="Refresh seconds.")] = 2.0,
    once: Annotated[bool, typer.Option(help="Print one table and exit.")] = False,
    output: Output = "table",
) -> None:  # fmt: skip
    """Live table of every device: vitals and per-model fps, latency, errors, drops."""
    from rich.live import Live

    from fleet.ctl.render import top_table

    _check_output(output)
    # Off a terminal (a pipe, a log) a live view prints nothing: one table, as with --once.
    if once or output == "json" or not sys.stdout.isatty():
        devices_ = _call(credential, _list_devices)
        if output == "json":
            _json(devices_)
        else:
            _console().print(top_table(devices_))
        return

    async def watch(client: Any) -> None:
        with Live(refresh_per_second=4) as live:
            while True:
                live.update(top_table(await _list_devices(client)))
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        _call(credential, watch)


@app.command("telemetry")
def telemetry(
    device: Annotated[str, typer.Argument(help="Device id.")],
    credential: Credential = DEFAULT_CREDENTIAL,
    since: Annotated[str, typer.Option(help="How far back, e.g. 1h.")] = "1h",
    limit: Annotated[int, typer.Option(help="Most samples to show.")] = 1000,
    output: Output = "table",
) -> None:  # fmt: skip
    """Telemetry history of one device."""
    from rich.table import Table

    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.GetTelemetryRequest(
        device_id=device, since_s=parse_duration(since), limit=limit
    )
    response = _call(credential, lambda c: c.stub.GetTelemetry(request))
    samples = [json.loads(sample.telemetry_json) for sample in response.samples]
    if output == "json":
        _json(samples)
        return
    table = Table(title=f"{device}: {len(samples)} samples")
    for column in ("received", "cpu %", "model", "version", "fps", "p95 ms", "requests", "errors"):
        table.add_column(column)
    import time

    for sample in samples:
        when = time.strftime("%H:%M:%S", time.localtime(sample["received_at"]))
        for model in sample["models"] or [{}]:
            table.add_row(
                when,
                f"{sample['cpu_percent']:.0f}",
                str(model.get("name", "-")),
                str(model.get("version", "-")),
                f"{model.get('fps', 0):.1f}",
                f"{model.get('latency_p95_ms', 0):.2f}",
                str(model.get("requests", 0)),
                str(model.get("errors", 0)),
            )
    _console().print(table)


@app.command("pin")
def pin(
    device: Annotated[str, typer.Argument(help="Device id.")],
    version: Annotated[str, typer.Argument(help="Version to hold it at; '' unpins.")],
    model: Annotated[str, typer.Option(help="Model name.")],
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:  # fmt: skip
    """Hold one device at a version; pinned devices are left out of rollouts."""
    from fleet.ctl.render import devices_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.PinDeviceRequest(device_id=device, model_name=model, version=version)
    response = _call(credential, lambda c: c.stub.PinDevice(request))
    if output == "json":
        _json(response.device)
    else:
        _console().print(devices_table([response.device]))


@app.command("remove")
def remove(
    device: Annotated[str, typer.Argument(help="Device id.")],
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:
    """Forget a device and revoke its key: its certificate stops working at once, and it cannot
    enroll again with the same key."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.RemoveDeviceRequest(device_id=device)
    response = _call(credential, lambda c: c.stub.RemoveDevice(request))
    if output == "json":
        _json({"device_id": device, **_plain(response)})
    elif response.revoked_key_sha256:
        typer.echo(f"removed {device}; revoked key {response.revoked_key_sha256}")
    else:
        typer.echo(f"removed {device} (its key was never seen: nothing to revoke)")


@app.command("audit")
def audit(
    credential: Credential = DEFAULT_CREDENTIAL,
    limit: Annotated[int, typer.Option(help="Newest entries to show.")] = 50,
    output: Output = "table",
) -> None:  # fmt: skip
    """The audit log of admin actions."""
    from rich.table import Table

    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ListAuditEntriesRequest(limit=limit)
    response = _call(credential, lambda c: c.stub.ListAuditEntries(request))
    if output == "json":
        _json(list(response.entries))
        return
    table = Table(title="audit log")
    for column in ("at", "actor", "action", "detail"):
        table.add_column(column)
    for entry in response.entries:
        table.add_row(entry.at.ToJsonString(), entry.actor, entry.action, entry.detail_json)
    _console().print(table)


# rollouts
@app.command("deploy")
def deploy(
    bundle: Annotated[Path, typer.Argument(help="A signed bundle from `fleetctl package`.")],
    credential: Credential = DEFAULT_CREDENTIAL,
    selector: Annotated[list[str] | None, typer.Option("--selector", help="key=value: which devices.")] = None,
    steps: Annotated[str, typer.Option(help="Wave sizes in percent of eligible devices.")] = "1,10,50,100",
    bake: Annotated[str, typer.Option(help="How long each wave runs before it is judged.")] = "10m",
    gate: Annotated[list[str] | None, typer.Option("--gate", help="e.g. 'p95_latency_ms <= 1.2*baseline' (repeatable).")] = None,
    min_devices: Annotated[int, typer.Option(help="Reporting devices needed per cohort, else inconclusive.")] = 3,
    min_requests: Annotated[int, typer.Option(help="Requests a device must serve in the bake to count.")] = 20,
    max_install_failures: Annotated[float, typer.Option(help="Share of a wave that may fail to install.")] = 0.2,
    max_timeouts: Annotated[float, typer.Option(help="Share of a wave that may not install in time.")] = 0.2,
    install_timeout: Annotated[str, typer.Option(help="How long a wave may take to install.")] = "10m",
    webhook: Annotated[str, typer.Option("--webhook", help="URL this rollout's events are POSTed to as JSON (besides the controller's --webhook).")] = "",
    watch: Annotated[bool, typer.Option(help="Follow the rollout until it ends.")] = False,
    output: Output = "table",
) -> None:  # fmt: skip
    """Upload BUNDLE and roll it out in waves, gated on live metrics against the old version."""
    from fleet.ctl.render import rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    try:
        wave_steps = [float(step) for step in steps.split(",") if step.strip()]
    except ValueError:
        raise typer.BadParameter(f"--steps {steps!r} must be numbers like 1,10,50,100") from None

    async def run(client: Any) -> Any:
        uploaded = await client.upload_bundle(bundle)
        request = admin_pb2.CreateRolloutRequest(
            bundle_sha256=uploaded.bundle_sha256,
            selector=parse_labels(selector),
            steps=wave_steps,
            bake_s=parse_duration(bake),
            gates=gate or [],
            min_devices=min_devices,
            min_requests=min_requests,
            max_install_failure_rate=max_install_failures,
            max_timeout_rate=max_timeouts,
            install_timeout_s=parse_duration(install_timeout),
            webhook_url=webhook,
        )
        created = await client.stub.CreateRollout(request)
        if watch:
            return await _watch(client, created.rollout.rollout_id, output)
        return created.rollout

    rollout = _call(credential, run)
    if not watch and output == "json":
        _json(rollout)
    elif not watch:
        _console().print(rollout_view(rollout))
    elif rollout.state != admin_pb2.ROLLOUT_STATE_SUCCEEDED:
        raise typer.Exit(3)


async def _watch(client: Any, rollout_id: str, output: str, interval: float = 1.0) -> Any:
    """Follow the rollout until it succeeds, rolls back or pauses; return its last state.

    On a terminal: a live view. Otherwise (a pipe, a CI log): one progress line each time the
    rollout changes, then the final view; with `--output json`, one JSON object per line."""
    from rich.live import Live

    from fleet.ctl.output import dumps
    from fleet.ctl.render import progress_line, rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    ended = (
        admin_pb2.ROLLOUT_STATE_SUCCEEDED,
        admin_pb2.ROLLOUT_STATE_ROLLED_BACK,
        admin_pb2.ROLLOUT_STATE_PAUSED,
    )
    request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
    if output == "json" or not sys.stdout.isatty():
        # Polling the controller: there is no push channel for operators.
        last = ""
        while True:
            rollout = (await client.stub.GetRollout(request)).rollout
            # Compared without the time the text line starts with: a line only when it changed.
            line = (
                dumps(rollout, lines=True)
                if output == "json"
                else progress_line(rollout, stamped=False)
            )
            if line != last:
                typer.echo(line if output == "json" else f"{time.strftime('%H:%M:%S')}  {line}")
                last = line
            if rollout.state in ended:
                if output != "json":
                    _console().print(rollout_view(rollout))
                return rollout
            await asyncio.sleep(interval)
    with Live(refresh_per_second=4) as live:
        while True:
            rollout = (await client.stub.GetRollout(request)).rollout
            live.update(rollout_view(rollout))
            if rollout.state in ended:
                return rollout
            await asyncio.sleep(interval)


RolloutId = Annotated[str, typer.Argument(help="Rollout id; empty: the newest.")]


@rollout_app.command("status")
def rollout_status(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    watch: Annotated[bool, typer.Option(help="Follow it live.")] = False,
    output: Output = "table",
) -> None:  # fmt: skip
    """Per-wave progress of a rollout. With --watch, exits 3 unless it succeeds."""
    from fleet.ctl.render import rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)

    async def run(client: Any) -> Any:
        if watch:
            return await _watch(client, rollout_id, output)
        return (
            await client.stub.GetRollout(admin_pb2.GetRolloutRequest(rollout_id=rollout_id))
        ).rollout

    rollout = _call(credential, run)
    if not watch and output == "json":
        _json(rollout)
    elif not watch:
        _console().print(rollout_view(rollout))
    elif rollout.state != admin_pb2.ROLLOUT_STATE_SUCCEEDED:
        raise typer.Exit(3)


@rollout_app.command("list")
def rollout_list(credential: Credential = DEFAULT_CREDENTIAL, output: Output = "table") -> None:
    """Every rollout, oldest first."""
    from fleet.ctl.render import rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    response = _call(credential, lambda c: c.stub.ListRollouts(admin_pb2.ListRolloutsRequest()))
    if output == "json":
        _json(list(response.rollouts))
    else:
        for rollout in response.rollouts:
            _console().print(rollout_view(rollout))


def _steer(credential: Path, output: str, method: str, request: Any) -> None:
    from fleet.ctl.render import rollout_view

    _check_output(output)
    response = _call(credential, lambda c: getattr(c.stub, method)(request))
    if output == "json":
        _json(response.rollout)
    else:
        _console().print(rollout_view(response.rollout))


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:
    """Pass the current wave by hand and move on (also resumes a paused rollout)."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _steer(
        credential, output, "PromoteRollout", admin_pb2.PromoteRolloutRequest(rollout_id=rollout_id)
    )


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:
    """Hold a rollout where it is (no verdict, no next wave) until promote or abort."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _steer(credential, output, "PauseRollout", admin_pb2.PauseRolloutRequest(rollout_id=rollout_id))


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    reason: Annotated[str, typer.Option(help="Recorded in the rollout and the audit log.")] = "",
    output: Output = "table",
) -> None:  # fmt: skip
    """Stop a rollout and roll every device it touched back."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    request = admin_pb2.AbortRolloutRequest(rollout_id=rollout_id, reason=reason)
    _steer(credential, output, "AbortRollout", request)


@rollout_app.command("rollback")
def rollout_rollback(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:
    """Roll a rollout back, finished or not; only the latest rollout of its model."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    request = admin_pb2.RollbackRolloutRequest(rollout_id=rollout_id)
    _steer(credential, output, "RollbackRollout", request)


@app.command("why")
def why(
    rollout_id: RolloutId = "",
    credential: Credential = DEFAULT_CREDENTIAL,
    output: Output = "table",
) -> None:  # fmt: skip
    """Every gate measurement of a rollout: value, baseline, threshold, verdict."""
    from fleet.ctl.render import rollout_view, why_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ExplainRolloutRequest(rollout_id=rollout_id)
    response = _call(credential, lambda c: c.stub.ExplainRollout(request))
    if output == "json":
        _json(response)
        return
    console = _console()
    console.print(rollout_view(response.rollout))
    console.print(why_table(list(response.measurements)))


# `rollout why` and friends are also reachable under `rollout`, and the steering verbs at the
# top level (`fleetctl promote`), as the README lists them.
rollout_app.command("why")(why)
rollout_app.command("pin")(pin)
app.command("promote")(rollout_promote)
app.command("pause")(rollout_pause)
app.command("abort")(rollout_abort)
app.command("rollback")(rollout_rollback)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
