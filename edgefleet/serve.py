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
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from edgefleet.errors import (
    ExitCode,
    exit_code_for,
    fail,
    quiet_third_party_logs,
    settings_error,
)
from server.settings import DEFAULT_MAX_FRAME_PIXELS, DEFAULT_MAX_MESSAGE_BYTES, ServerSettings

if TYPE_CHECKING:
    from fleet.agent.settings import AgentSettings
    from server.hardware.policy import PlannerSettings
    from server.models.runtime_plan import ManifestPlanner

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    repository: Annotated[Path, typer.Option(help="Model repository: <repo>/<name>/<version>/.")] = Path("models"),
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port (KServe v2 + FrameStream); 0 picks one.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; -1 disables.")] = 8002,
    http_port: Annotated[int, typer.Option(help="KServe v2 HTTP/REST port; -1 disables, 0 picks one.")] = 8000,
    model: Annotated[list[str] | None, typer.Option("--model", help="Load only these models (repeatable); default: all.")] = None,
    max_message_bytes: Annotated[int, typer.Option(help="Largest gRPC message accepted.")] = DEFAULT_MAX_MESSAGE_BYTES,
    max_frame_pixels: Annotated[int, typer.Option(help="Largest camera frame in pixels; bigger JPEG/PNG headers are refused before decoding.")] = DEFAULT_MAX_FRAME_PIXELS,
    versions_kept: Annotated[int, typer.Option(help="Loaded versions kept per model (active + most recent previous).")] = 1,
    stream_max_in_flight: Annotated[int, typer.Option(help="Default in-flight frame window per camera stream.")] = 4,
    shutdown_grace_s: Annotated[float, typer.Option(help="Seconds SIGTERM waits for in-flight work.")] = 10.0,
    drain_delay_s: Annotated[float, typer.Option(help="Seconds after SIGTERM that the server reports not ready but still takes work (load balancers notice).")] = 0.0,
    classification_scores: Annotated[str, typer.Option(help="Classification result scores: model (softmax probabilities when the manifest asks) or raw (the output value, as Triton gives).")] = "model",
    readiness: Annotated[str, typer.Option(help="models: ready only while every model it should serve is loaded (Triton's strict readiness); server: ready once started.")] = "models",
    port_file: Annotated[Path | None, typer.Option(help="Write the bound gRPC port here once serving.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM); with --tls-key turns TLS on.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM, unencrypted).")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="Demand client certificates signed by this CA (mutual TLS).")] = None,
    auth_token: Annotated[str | None, typer.Option(envvar="EDGEFLEET_AUTH_TOKEN", help="Require `authorization: Bearer TOKEN` on every call but health checks (gRPC and HTTP).")] = None,
    http_plaintext: Annotated[bool | None, typer.Option("--http-plaintext/--no-http-plaintext", help="Serve HTTP without TLS even though gRPC uses TLS (a TLS-terminating proxy in front).")] = None,
    http_header_timeout_s: Annotated[float, typer.Option(help="Seconds an HTTP client has to send a request's headers (and an idle connection lives).")] = 10.0,
    http_body_timeout_s: Annotated[float, typer.Option(help="Seconds an HTTP client has to send a whole request body.")] = 30.0,
    planner: Annotated[str, typer.Option(help="hardware: plan each model from probed facts; manifest: run the manifest as written.")] = "hardware",
    policy: Annotated[str | None, typer.Option(help="Hardware planner policy: latency, throughput or balanced.")] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(help="Latency budget per request for the hardware planner.")] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(help="Memory each model may take (hardware planner).")] = None,
    autotune: Annotated[bool | None, typer.Option("--autotune/--no-autotune", help="Measure threads and batch sizes at load (cached).")] = None,
    precision: Annotated[str | None, typer.Option(help="Pin the precision of every model: fp32, fp16 or int8.")] = None,
    intra_op_threads: Annotated[int | None, typer.Option(help="Pin intra-op threads of every model.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Pin the max batch size of every model.")] = None,
    controller: Annotated[str | None, typer.Option(help="Fleet controller HOST:PORT, or several comma-separated (replicas, tried in turn on failure): run the fleet agent beside the server.")] = None,
    controller_ca: Annotated[Path | None, typer.Option(help="Fleet controller CA certificate (PEM); needed to enroll.")] = None,
    enroll_address: Annotated[str | None, typer.Option(help="Controller enrollment HOST:PORT; default: the controller's port + 1.")] = None,
    enroll_token: Annotated[str | None, typer.Option(envvar="EDGEFLEET_AGENT_ENROLL_TOKEN", help="One-time token from `fleetctl enroll`; needed once.")] = None,
    device_id: Annotated[str, typer.Option(help="Device id to enroll as; empty lets the controller pick.")] = "",
    agent_state: Annotated[Path, typer.Option(help="Fleet agent state: certificate, downloads, telemetry buffer.")] = Path("agent-state"),
    trusted_key: Annotated[list[Path] | None, typer.Option("--trusted-key", help="Bundle signing public key, or a directory of *.pub (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value label the agent reports (repeatable).")] = None,
    bundle_source: Annotated[list[str] | None, typer.Option("--bundle-source", help="HTTP base URL serving <sha256>.efb bundles (a mirror or the origin), tried in order before the controller (repeatable).")] = None,
) -> None:  # fmt: skip
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
        except typer.BadParameter as exc:
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
    ctx: typer.Context,
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


def _server_settings(ctx: typer.Context) -> ServerSettings:
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
        return ServerSettings(**given)
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
