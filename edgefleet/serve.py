"""`edgefleet serve`: the composition root of an edge device.

It builds the server's settings, the hardware planner and, with --controller, the fleet agent
that drives the server through its public API; runs them until SIGTERM; then drains. It lives
in `edgefleet/` because it joins `server/` and `fleet/`, which never import each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from edgefleet.errors import (
    ExitCode,
    exit_code_for,
    fail,
    quiet_third_party_logs,
    settings_error,
)
from server.settings import (
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_MESSAGE_BYTES,
    SandboxSettings,
    ServerSettings,
)

if TYPE_CHECKING:
    from fleet.agent.settings import AgentSettings
    from server.hardware.policy import PlannerSettings
    from server.models.runtime_plan import ManifestPlanner

log = logging.getLogger(__name__)


def register(app: click.Group) -> None:
    app.add_command(serve)


@click.command("serve")
@click.pass_context
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=Path("models"),
    help="Model repository: <repo>/<name>/<version>/.",
)
@click.option("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 for every interface.")
@click.option(
    "--port", type=int, default=8001, help="gRPC port (KServe v2 + FrameStream); 0 picks one."
)
@click.option(
    "--metrics-port", type=int, default=8002, help="Prometheus /metrics port; -1 disables."
)
@click.option(
    "--http-port",
    type=int,
    default=8000,
    help="KServe v2 HTTP/REST port; -1 disables, 0 picks one.",
)
@click.option("--model", multiple=True, help="Load only these models (repeatable); default: all.")
@click.option(
    "--max-message-bytes",
    type=int,
    default=DEFAULT_MAX_MESSAGE_BYTES,
    help="Largest gRPC message accepted.",
)
@click.option(
    "--max-frame-pixels",
    type=int,
    default=DEFAULT_MAX_FRAME_PIXELS,
    help="Largest camera frame in pixels; bigger JPEG/PNG headers are refused before decoding.",
)
@click.option(
    "--versions-kept",
    type=int,
    default=1,
    help="Loaded versions kept per model (active + most recent previous).",
)
@click.option(
    "--stream-max-in-flight",
    type=int,
    default=4,
    help="Default in-flight frame window per camera stream.",
)
@click.option(
    "--shutdown-grace-s", type=float, default=10.0, help="Seconds SIGTERM waits for in-flight work."
)
@click.option(
    "--drain-delay-s",
    type=float,
    default=0.0,
    help="Seconds after SIGTERM that the server reports not ready but still takes work (load balancers notice).",
)
@click.option(
    "--classification-scores",
    default="model",
    help="Classification result scores: model (softmax probabilities when the manifest asks) or raw (the output value, as Triton gives).",
)
@click.option(
    "--readiness",
    default="models",
    help="models: ready only while every model it should serve is loaded (Triton's strict readiness); server: ready once started.",
)
@click.option(
    "--port-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the bound gRPC port here once serving.",
)
@click.option("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    default=None,
    help="TLS certificate (PEM); with --tls-key turns TLS on.",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path),
    default=None,
    help="TLS private key (PEM, unencrypted).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Demand client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--auth-token",
    default=None,
    envvar="EDGEFLEET_AUTH_TOKEN",
    show_envvar=True,
    help="Require `authorization: Bearer TOKEN` on every call but health checks (gRPC and HTTP).",
)
@click.option(
    "--http-plaintext/--no-http-plaintext",
    default=None,
    help="Serve HTTP without TLS even though gRPC uses TLS (a TLS-terminating proxy in front).",
)
@click.option(
    "--http-header-timeout-s",
    type=float,
    default=10.0,
    help="Seconds an HTTP client has to send a request's headers (and an idle connection lives).",
)
@click.option(
    "--http-body-timeout-s",
    type=float,
    default=30.0,
    help="Seconds an HTTP client has to send a whole request body.",
)
@click.option(
    "--planner",
    default="hardware",
    help="hardware: plan each model from probed facts; manifest: run the manifest as written.",
)
@click.option(
    "--policy", default=None, help="Hardware planner policy: latency, throughput or balanced."
)
@click.option(
    "--latency-budget-ms",
    type=float,
    default=None,
    help="Latency budget per request for the hardware planner.",
)
@click.option(
    "--memory-budget-mb",
    type=float,
    default=None,
    help="Memory each model may take (hardware planner).",
)
@click.option(
    "--autotune/--no-autotune",
    default=None,
    help="Measure threads and batch sizes at load (cached).",
)
@click.option(
    "--precision", default=None, help="Pin the precision of every model: fp32, fp16 or int8."
)
@click.option(
    "--intra-op-threads", type=int, default=None, help="Pin intra-op threads of every model."
)
@click.option(
    "--max-batch-size", type=int, default=None, help="Pin the max batch size of every model."
)
@click.option(
    "--controller",
    default=None,
    help="Fleet controller HOST:PORT, or several comma-separated (replicas, tried in turn on failure): run the fleet agent beside the server.",
)
@click.option(
    "--controller-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Fleet controller CA certificate (PEM); needed to enroll.",
)
@click.option(
    "--enroll-address",
    default=None,
    help="Controller enrollment HOST:PORT; default: the controller's port + 1.",
)
@click.option(
    "--enroll-token",
    default=None,
    envvar="EDGEFLEET_AGENT_ENROLL_TOKEN",
    show_envvar=True,
    help="One-time token from `fleetctl enroll`; needed once.",
)
@click.option(
    "--device-id", default="", help="Device id to enroll as; empty lets the controller pick."
)
@click.option(
    "--agent-state",
    type=click.Path(path_type=Path),
    default=Path("agent-state"),
    help="Fleet agent state: certificate, downloads, telemetry buffer.",
)
@click.option(
    "--trusted-key",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Bundle signing public key, or a directory of *.pub (repeatable).",
)
@click.option("--label", multiple=True, help="key=value label the agent reports (repeatable).")
@click.option(
    "--bundle-source",
    multiple=True,
    help="HTTP base URL serving <sha256>.efb bundles (a mirror or the origin), tried in order before the controller (repeatable).",
)
def serve(
    ctx: click.Context,
    repository: Path,
    host: str,
    port: int,
    metrics_port: int,
    http_port: int,
    model: tuple[str, ...],
    max_message_bytes: int,
    max_frame_pixels: int,
    versions_kept: int,
    stream_max_in_flight: int,
    shutdown_grace_s: float,
    drain_delay_s: float,
    classification_scores: str,
    readiness: str,
    port_file: Path | None,
    log_level: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_token: str | None,
    http_plaintext: bool | None,
    http_header_timeout_s: float,
    http_body_timeout_s: float,
    planner: str,
    policy: str | None,
    latency_budget_ms: float | None,
    memory_budget_mb: float | None,
    autotune: bool | None,
    precision: str | None,
    intra_op_threads: int | None,
    max_batch_size: int | None,
    controller: str | None,
    controller_ca: Path | None,
    enroll_address: str | None,
    enroll_token: str | None,
    device_id: str,
    agent_state: Path,
    trusted_key: tuple[Path, ...],
    label: tuple[str, ...],
    bundle_source: tuple[str, ...],
) -> None:
    """Serve the models in REPOSITORY over gRPC (KServe v2 / Triton protocol and FrameStream)."""
    settings = _server_settings(ctx)
    from server.models.memory import bound_big_buffers

    # Before any thread starts (the hardware probe's, gRPC's): glibc's arena limit applies to
    # arenas created from now on (EdgeServer does it too, for servers built in-process).
    bound_big_buffers()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_third_party_logs()
    from server.errors import StartupError
    from server.tls import TlsConfigError

    if planner not in ("hardware", "manifest"):
        fail("--planner must be hardware or manifest", ExitCode.USAGE)
    plan_settings = None
    manifest_planner = None
    if planner == "manifest":
        manifest_planner = _manifest_planner(
            ctx, precision=precision, intra_op_threads=intra_op_threads,
            max_batch_size=max_batch_size,
        )  # fmt: skip
    if planner == "hardware":
        from server.hardware.cli import planner_settings

        try:
            plan_settings = planner_settings(
                policy=policy,
                latency_budget_ms=latency_budget_ms,
                memory_budget_mb=memory_budget_mb,
                autotune=autotune,
                precision=precision,
                intra_op_threads=intra_op_threads,
                max_batch_size=max_batch_size,
            )
        except click.BadParameter as exc:
            fail(str(exc), ExitCode.USAGE)
    agent_settings = None
    if controller:
        from fleet.agent.settings import AgentSettings

        # A fresh device gets its models from the fleet: the repository may start empty.
        settings.repository.mkdir(parents=True, exist_ok=True)

        agent_settings = AgentSettings(
            controller=controller,
            controller_ca=controller_ca,
            enroll_address=enroll_address,
            enroll_token=enroll_token,
            device_id=device_id,
            state_dir=agent_state,
            trusted_keys=tuple(trusted_key or ()),
            labels=dict(item.split("=", 1) for item in label or [] if "=" in item),
            bundle_sources=tuple(bundle_source or ()),
        )
    from fleet.errors import FleetError

    try:
        asyncio.run(
            run_server(settings, plan_settings, agent_settings, manifest_planner=manifest_planner)
        )
    except (TlsConfigError, FleetError) as exc:
        fail(str(exc), ExitCode.USAGE)
    except StartupError as exc:
        fail(str(exc), exit_code_for(exc))


# Flags that only the hardware planner reads.
_HARDWARE_ONLY = ("policy", "latency_budget_ms", "memory_budget_mb", "autotune")


def _manifest_planner(
    ctx: click.Context,
    *,
    precision: str | None,
    intra_op_threads: int | None,
    max_batch_size: int | None,
) -> ManifestPlanner:
    """The manifest planner with the command line's pins, or exit 2 naming a flag it cannot
    honour: a flag given is never dropped silently."""
    from server.models.runtime_plan import ManifestPlanner

    for name in _HARDWARE_ONLY:
        if ctx.params.get(name) is not None:
            flag = "--" + name.replace("_", "-")
            fail(
                f"{flag} is a hardware planner setting: use it with --planner hardware",
                ExitCode.USAGE,
            )
    if precision not in (None, "fp32"):
        fail(
            f"--precision {precision} needs --planner hardware, which converts the model and "
            "checks its accuracy; --planner manifest serves the model file as it is (fp32)",
            ExitCode.USAGE,
        )
    if intra_op_threads is not None and intra_op_threads < 1:
        fail("--intra-op-threads must be at least 1", ExitCode.USAGE)
    if max_batch_size is not None and max_batch_size < 0:
        fail("--max-batch-size must be 0 or more", ExitCode.USAGE)
    return ManifestPlanner(intra_op_threads=intra_op_threads, max_batch_size=max_batch_size)


# Settings fields whose flag has another name.
_FLAG_FIELDS = {"model": "models"}
# Flags of `serve` that are not server settings (planner, fleet agent).
_SERVER_FLAGS = frozenset(ServerSettings.model_fields) | frozenset(_FLAG_FIELDS)


def _server_settings(ctx: click.Context) -> ServerSettings:
    """ServerSettings from the flags given on the command line; every other setting comes
    from its EDGEFLEET_* variable, else the default. A bad value is one line and exit 2."""
    given: dict[str, Any] = {}
    for name, value in ctx.params.items():
        if name not in _SERVER_FLAGS or value is None:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            continue
        if name == "model":
            value = tuple(value) or None
        if name == "log_level":
            value = str(value).upper()
        given[_FLAG_FIELDS.get(name, name)] = value
    try:
        sandbox = SandboxSettings()  # no flags: EDGEFLEET_SANDBOX_* only
    except ValidationError as exc:
        fail(settings_error(exc, prefix="EDGEFLEET_SANDBOX_", flags=False), ExitCode.USAGE)
    try:
        return ServerSettings(**given, sandbox=sandbox)
    except ValidationError as exc:
        fail(settings_error(exc, prefix="EDGEFLEET_"), ExitCode.USAGE)


async def run_server(
    settings: ServerSettings,
    planner_settings: PlannerSettings | None = None,
    agent_settings: AgentSettings | None = None,
    *,
    manifest_planner: ManifestPlanner | None = None,
) -> None:
    """Serve until SIGTERM: with `planner_settings` the hardware planner plans each model,
    else `manifest_planner` (the manifest as written, with the command line's pins)."""
    from server.app import EdgeServer

    hardware_json = "{}"
    boot = None
    if agent_settings is not None:
        # The device boots into its desired or last known good versions, controller or not.
        from fleet.agent.local_state import BootPlan

        boot = await asyncio.to_thread(BootPlan.load, agent_settings.state_dir)
    boot_order = boot.order if boot is not None else None
    if planner_settings is None:
        server = EdgeServer(settings, planner=manifest_planner, boot_order=boot_order)
    else:
        from server.hardware.planner import HardwarePlanner

        planner = HardwarePlanner(planner_settings, background=True)
        facts = await asyncio.to_thread(planner.facts)
        log.info(
            "hardware %s: %s, %d usable cores, isa %s, gpus %s, onnxruntime %s",
            facts.fingerprint,
            facts.cpu.model,
            facts.cpu.usable_cores,
            ",".join(facts.cpu.features) or "-",
            ",".join(gpu.name for gpu in facts.gpus) or "none",
            ",".join(facts.onnx_providers),
        )
        hardware_json = json.dumps(facts.to_dict(), default=str)
        server = EdgeServer(
            settings,
            planner=planner,
            device_facts=lambda: planner.facts().to_dict(),
            boot_order=boot_order,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    agent = None
    if agent_settings is not None:
        # The fleet agent drives this server through its core, in this process and loop.
        from fleet.agent.agent import Agent

        agent = Agent(server.core, settings.repository, agent_settings, hardware_json, boot)
        try:
            await agent.start()
        except BaseException:
            await server.stop()
            raise
    await stop.wait()
    log.info("signal received: draining for up to %.1f s", settings.shutdown_grace_s)
    if agent is not None:
        await agent.stop()
    await server.stop()
