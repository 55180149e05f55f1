"""`fleetctl`: enroll devices, sign and ship model bundles, run and watch rollouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from common.cli import CONTEXT, OrderedGroup

T = TypeVar("T")
DEFAULT_CREDENTIAL = Path("fleet-data/admin-credential.json")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

app = OrderedGroup(
    name="fleetctl",
    help="Operate an edgefleet fleet: devices, signed bundles, gated rollouts, telemetry.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
keys_app = OrderedGroup(help="Bundle signing keys.", no_args_is_help=True)
rollout_app = OrderedGroup(help="Watch and steer rollouts.", no_args_is_help=True)
bundles_app = OrderedGroup(
    help="Signed bundles and the HTTP origin they ship from.", no_args_is_help=True
)
app.add_command(keys_app, name="keys")
app.add_command(rollout_app, name="rollout")
app.add_command(bundles_app, name="bundles")

credential_option = click.option(
    "--credential",
    type=click.Path(path_type=Path),
    default=DEFAULT_CREDENTIAL,
    envvar="EDGEFLEET_FLEETCTL_CREDENTIAL",
    show_envvar=True,
    help="Admin credential written by the controller (<data>/admin-credential.json).",
)
output_option = click.option(
    "--output",
    "-o",
    default="table",
    help="table (for people) or json (one style for every verb: see fleet/ctl/output.py).",
)
# Rollout id; empty: the newest.
rollout_id_argument = click.argument("rollout_id", default="", required=False)


def parse_duration(text: str) -> float:
    """`10m`, `90s`, `1h`, `1.5` (seconds) -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 10m or 1h")
    return float(match[1]) * _UNITS[match[2]]


def parse_labels(pairs: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        for item in pair.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r} must be key=value")
            labels[key.strip()] = value.strip()
    return labels


def _call(credential: Path, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run one admin action; turn gRPC failures into a one-line error and exit status 1."""
    import grpc

    from fleet.ctl.client import AdminClient, AdminCredential

    if not credential.is_file():
        click.echo(f"fleetctl: no admin credential at {credential} (use --credential)", err=True)
        raise click.exceptions.Exit(2)

    async def run() -> T:
        async with AdminClient.connect(AdminCredential.load(credential)) as client:
            return await action(client)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        click.echo(f"fleetctl: {error.code().name}: {error.details()}", err=True)
        raise click.exceptions.Exit(1) from None


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise click.BadParameter("--output must be table or json")


def _plain(value: object) -> dict[str, Any]:
    from fleet.ctl.output import plain

    result: dict[str, Any] = plain(value)
    return result


def _json(value: object) -> None:
    from fleet.ctl.output import dumps

    click.echo(dumps(value))


# keys and bundles
@keys_app.command("generate")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("keys"),
    help="Where to write NAME.key and NAME.pub.",
)
@click.option("--name", default="release", help="Key name.")
@output_option
def keys_generate(
    directory: Path,
    name: str,
    output: str,
) -> None:
    """Generate an Ed25519 bundle signing key pair."""
    from fleet.keys import generate_keypair, key_id, load_public_key

    _check_output(output)
    try:
        private_path, public_path = generate_keypair(directory, name)
    except FileExistsError as error:
        click.echo(f"fleetctl: {error}", err=True)
        raise click.exceptions.Exit(1) from None
    identifier = key_id(load_public_key(public_path))
    if output == "json":
        _json({"private_key": str(private_path), "public_key": str(public_path),
               "key_id": identifier})  # fmt: skip
        return
    click.echo(f"private key {private_path} (keep it secret)")
    click.echo(f"public key  {public_path} (give it to the controller and the devices)")
    click.echo(f"key id      {identifier}")


@app.command("package")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name.")
@click.option("--version", required=True, help="Version number to ship it as.")
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    default=Path("keys/release.key"),
    help="Ed25519 private key.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bundles"), help="Output directory."
)
@output_option
def package(
    model_dir: Path,
    name: str,
    version: str,
    key: Path,
    out: Path,
    output: str,
) -> None:
    """Build a signed, content-addressed bundle from MODEL_DIR (a model version directory with
    manifest.json)."""
    from fleet.bundle import build_bundle, sha256_path
    from fleet.keys import load_private_key

    _check_output(output)
    try:
        path = build_bundle(model_dir, name, version, load_private_key(key), out)
    except (ValueError, OSError) as error:
        click.echo(f"fleetctl: {error}", err=True)
        raise click.exceptions.Exit(1) from None
    if output == "json":
        _json({"bundle": str(path), "model_name": name, "version": version,
               "bundle_sha256": sha256_path(path), "size": path.stat().st_size})  # fmt: skip
    else:
        click.echo(str(path))


@bundles_app.command("publish")
@click.argument("bundle", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--to",
    type=click.Path(path_type=Path),
    required=True,
    help="The origin directory a web server or CDN serves; agents list its URL with --bundle-source.",
)
@click.option(
    "--trusted-key",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="Public key file or directory of *.pub a bundle must be signed by (repeatable).",
)
@output_option
def bundles_publish(
    bundle: tuple[Path, ...],
    to: Path,
    trusted_key: tuple[Path, ...],
    output: str,
) -> None:
    """Verify BUNDLEs (signed bundles from `fleetctl package`) and publish them to an HTTP origin
    directory as <sha256>.efb."""
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
                click.echo(f"{digest}  {published}")
    except (BundleRejected, ValueError, OSError) as error:
        click.echo(f"fleetctl: {error}", err=True)
        raise click.exceptions.Exit(1) from None
    if output == "json":
        _json(published_all)


# devices
@app.command("enroll")
@credential_option
@click.option("--labels", multiple=True, help="key=value[,key=value] for the device.")
@click.option("--ttl", default="24h", help="Token lifetime, e.g. 1h.")
@output_option
def enroll(
    credential: Path,
    labels: tuple[str, ...],
    ttl: str,
    output: str,
) -> None:
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
        click.echo(response.token)


@app.command("devices")
@credential_option
@click.option("--selector", multiple=True, help="key=value filters.")
@output_option
def devices(
    credential: Path,
    selector: tuple[str, ...],
    output: str,
) -> None:
    """Devices with desired vs actual version per model (version drift)."""
    from fleet.ctl.render import devices_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ListDevicesRequest(selector=parse_labels(selector))
    response = _call(credential, lambda c: c.stub.ListDevices(request))
    if output == "json":
        _json(list(response.devices))
    else:
        click.echo(devices_table(list(response.devices)))


async def _list_devices(client: Any) -> list[Any]:
    from protos.edgefleet.fleet.v1 import admin_pb2

    listed = await client.stub.ListDevices(admin_pb2.ListDevicesRequest())
    return list(listed.devices)


@app.command("top")
@credential_option
@click.option("--interval", type=float, default=2.0, help="Refresh seconds.")
@click.option("--once/--no-once", default=False, help="Print one table and exit.")
@output_option
def top(
    credential: Path,
    interval: float,
    once: bool,
    output: str,
) -> None:
    """Live table of every device: vitals and per-model fps, latency, errors, drops."""
    from common.text_table import LiveText
    from fleet.ctl.render import top_table

    _check_output(output)
    # Off a terminal (a pipe, a log) a live view prints nothing: one table, as with --once.
    if once or output == "json" or not sys.stdout.isatty():
        devices_ = _call(credential, _list_devices)
        if output == "json":
            _json(devices_)
        else:
            click.echo(top_table(devices_))
        return

    async def watch(client: Any) -> None:
        with LiveText(sys.stdout) as live:
            while True:
                live.update(top_table(await _list_devices(client)).render())
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        _call(credential, watch)


@app.command("telemetry")
@click.argument("device")
@credential_option
@click.option("--since", default="1h", help="How far back, e.g. 1h.")
@click.option("--limit", type=int, default=1000, help="Most samples to show.")
@output_option
def telemetry(
    device: str,
    credential: Path,
    since: str,
    limit: int,
    output: str,
) -> None:
    """Telemetry history of one device (DEVICE: its id)."""
    from common.text_table import TextTable
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
    table = TextTable(
        "received", "cpu %", "model", "version", "fps", "p95 ms", "requests", "errors",
        title=f"{device}: {len(samples)} samples",
    )  # fmt: skip
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
    click.echo(table)


@app.command("pin")
@click.argument("device")
@click.argument("version")
@click.option("--model", required=True, help="Model name.")
@credential_option
@output_option
def pin(
    device: str,
    version: str,
    model: str,
    credential: Path,
    output: str,
) -> None:
    """Hold one device at a version; pinned devices are left out of rollouts.

    DEVICE: the device id. VERSION: the version to hold it at; '' unpins."""
    from fleet.ctl.render import devices_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.PinDeviceRequest(device_id=device, model_name=model, version=version)
    response = _call(credential, lambda c: c.stub.PinDevice(request))
    if output == "json":
        _json(response.device)
    else:
        click.echo(devices_table([response.device]))


@app.command("remove")
@click.argument("device")
@credential_option
@output_option
def remove(
    device: str,
    credential: Path,
    output: str,
) -> None:
    """Forget a device and revoke its key: its certificate stops working at once, and it cannot
    enroll again with the same key. DEVICE: the device id."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.RemoveDeviceRequest(device_id=device)
    response = _call(credential, lambda c: c.stub.RemoveDevice(request))
    if output == "json":
        _json({"device_id": device, **_plain(response)})
    elif response.revoked_key_sha256:
        click.echo(f"removed {device}; revoked key {response.revoked_key_sha256}")
    else:
        click.echo(f"removed {device} (its key was never seen: nothing to revoke)")


@app.command("audit")
@credential_option
@click.option("--limit", type=int, default=50, help="Newest entries to show.")
@output_option
def audit(
    credential: Path,
    limit: int,
    output: str,
) -> None:
    """The audit log of admin actions."""
    from common.text_table import TextTable
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ListAuditEntriesRequest(limit=limit)
    response = _call(credential, lambda c: c.stub.ListAuditEntries(request))
    if output == "json":
        _json(list(response.entries))
        return
    table = TextTable("at", "actor", "action", "detail", title="audit log")
    for entry in response.entries:
        table.add_row(entry.at.ToJsonString(), entry.actor, entry.action, entry.detail_json)
    click.echo(table)


# rollouts
@app.command("deploy")
@click.argument("bundle", type=click.Path(path_type=Path))
@credential_option
@click.option("--selector", multiple=True, help="key=value: which devices.")
@click.option("--steps", default="1,10,50,100", help="Wave sizes in percent of eligible devices.")
@click.option("--bake", default="10m", help="How long each wave runs before it is judged.")
@click.option("--gate", multiple=True, help="e.g. 'p95_latency_ms <= 1.2*baseline' (repeatable).")
@click.option(
    "--min-devices",
    type=int,
    default=3,
    help="Reporting devices needed per cohort, else inconclusive.",
)
@click.option(
    "--min-requests",
    type=int,
    default=20,
    help="Requests a device must serve in the bake to count.",
)
@click.option(
    "--max-install-failures",
    type=float,
    default=0.2,
    help="Share of a wave that may fail to install.",
)
@click.option(
    "--max-timeouts", type=float, default=0.2, help="Share of a wave that may not install in time."
)
@click.option("--install-timeout", default="10m", help="How long a wave may take to install.")
@click.option(
    "--webhook",
    default="",
    help="URL this rollout's events are POSTed to as JSON (besides the controller's --webhook).",
)
@click.option("--watch/--no-watch", default=False, help="Follow the rollout until it ends.")
@output_option
def deploy(
    bundle: Path,
    credential: Path,
    selector: tuple[str, ...],
    steps: str,
    bake: str,
    gate: tuple[str, ...],
    min_devices: int,
    min_requests: int,
    max_install_failures: float,
    max_timeouts: float,
    install_timeout: str,
    webhook: str,
    watch: bool,
    output: str,
) -> None:
    """Upload BUNDLE and roll it out in waves, gated on live metrics against the old version.

    BUNDLE: a signed bundle from `fleetctl package`."""
    from fleet.ctl.render import rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    try:
        wave_steps = [float(step) for step in steps.split(",") if step.strip()]
    except ValueError:
        raise click.BadParameter(f"--steps {steps!r} must be numbers like 1,10,50,100") from None

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
        click.echo(rollout_view(rollout))
    elif rollout.state != admin_pb2.ROLLOUT_STATE_SUCCEEDED:
        raise click.exceptions.Exit(3)


async def _watch(client: Any, rollout_id: str, output: str, interval: float = 1.0) -> Any:
    """Follow the rollout until it succeeds, rolls back or pauses; return its last state.

    On a terminal: a live view. Otherwise (a pipe, a CI log): one progress line each time the
    rollout changes, then the final view; with `--output json`, one JSON object per line."""
    from common.text_table import LiveText
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
                click.echo(line if output == "json" else f"{time.strftime('%H:%M:%S')}  {line}")
                last = line
            if rollout.state in ended:
                if output != "json":
                    click.echo(rollout_view(rollout))
                return rollout
            await asyncio.sleep(interval)
    with LiveText(sys.stdout) as live:
        while True:
            rollout = (await client.stub.GetRollout(request)).rollout
            live.update(rollout_view(rollout))
            if rollout.state in ended:
                return rollout
            await asyncio.sleep(interval)


@rollout_app.command("status")
@rollout_id_argument
@credential_option
@click.option("--watch/--no-watch", default=False, help="Follow it live.")
@output_option
def rollout_status(
    rollout_id: str,
    credential: Path,
    watch: bool,
    output: str,
) -> None:
    """Per-wave progress of a rollout. With --watch, exits 3 unless it succeeds.

    ROLLOUT_ID: the rollout; empty: the newest."""
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
        click.echo(rollout_view(rollout))
    elif rollout.state != admin_pb2.ROLLOUT_STATE_SUCCEEDED:
        raise click.exceptions.Exit(3)


@rollout_app.command("list")
@credential_option
@output_option
def rollout_list(
    credential: Path,
    output: str,
) -> None:
    """Every rollout, oldest first."""
    from fleet.ctl.render import rollout_view
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    response = _call(credential, lambda c: c.stub.ListRollouts(admin_pb2.ListRolloutsRequest()))
    if output == "json":
        _json(list(response.rollouts))
    else:
        for rollout in response.rollouts:
            click.echo(rollout_view(rollout))


def _steer(credential: Path, output: str, method: str, request: Any) -> None:
    from fleet.ctl.render import rollout_view

    _check_output(output)
    response = _call(credential, lambda c: getattr(c.stub, method)(request))
    if output == "json":
        _json(response.rollout)
    else:
        click.echo(rollout_view(response.rollout))


@rollout_app.command("promote")
@rollout_id_argument
@credential_option
@output_option
def rollout_promote(
    rollout_id: str,
    credential: Path,
    output: str,
) -> None:
    """Pass the current wave by hand and move on (also resumes a paused rollout).

    ROLLOUT_ID: the rollout; empty: the newest."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _steer(
        credential, output, "PromoteRollout", admin_pb2.PromoteRolloutRequest(rollout_id=rollout_id)
    )


@rollout_app.command("pause")
@rollout_id_argument
@credential_option
@output_option
def rollout_pause(
    rollout_id: str,
    credential: Path,
    output: str,
) -> None:
    """Hold a rollout where it is (no verdict, no next wave) until promote or abort.

    ROLLOUT_ID: the rollout; empty: the newest."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    _steer(credential, output, "PauseRollout", admin_pb2.PauseRolloutRequest(rollout_id=rollout_id))


@rollout_app.command("abort")
@rollout_id_argument
@credential_option
@click.option("--reason", default="", help="Recorded in the rollout and the audit log.")
@output_option
def rollout_abort(
    rollout_id: str,
    credential: Path,
    reason: str,
    output: str,
) -> None:
    """Stop a rollout and roll every device it touched back.

    ROLLOUT_ID: the rollout; empty: the newest."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    request = admin_pb2.AbortRolloutRequest(rollout_id=rollout_id, reason=reason)
    _steer(credential, output, "AbortRollout", request)


@rollout_app.command("rollback")
@rollout_id_argument
@credential_option
@output_option
def rollout_rollback(
    rollout_id: str,
    credential: Path,
    output: str,
) -> None:
    """Roll a rollout back, finished or not; only the latest rollout of its model.

    ROLLOUT_ID: the rollout; empty: the newest."""
    from protos.edgefleet.fleet.v1 import admin_pb2

    request = admin_pb2.RollbackRolloutRequest(rollout_id=rollout_id)
    _steer(credential, output, "RollbackRollout", request)


@app.command("why")
@rollout_id_argument
@credential_option
@output_option
def why(
    rollout_id: str,
    credential: Path,
    output: str,
) -> None:
    """Every gate measurement of a rollout: value, baseline, threshold, verdict.

    ROLLOUT_ID: the rollout; empty: the newest."""
    from fleet.ctl.render import rollout_view, why_table
    from protos.edgefleet.fleet.v1 import admin_pb2

    _check_output(output)
    request = admin_pb2.ExplainRolloutRequest(rollout_id=rollout_id)
    response = _call(credential, lambda c: c.stub.ExplainRollout(request))
    if output == "json":
        _json(response)
        return
    click.echo(rollout_view(response.rollout))
    click.echo(why_table(list(response.measurements)))


# `rollout why` and friends are also reachable under `rollout`, and the steering verbs at the
# top level (`fleetctl promote`), as the README lists them.
rollout_app.add_command(why, "why")
rollout_app.add_command(pin, "pin")
app.add_command(rollout_promote, "promote")
app.add_command(rollout_pause, "pause")
app.add_command(rollout_abort, "abort")
app.add_command(rollout_rollback, "rollback")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
