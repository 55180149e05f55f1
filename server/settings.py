"""Typed server settings, built once by the CLI (flags over `EDGEFLEET_*` env) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# A raw 3840x2160 RGB frame is 24.9 MB; leave room for the envelope.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# 8K (7680x4320).
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320
# Request bodies the HTTP port holds at once: three of the largest bodies.
DEFAULT_HTTP_BODY_BUDGET_BYTES = 3 * DEFAULT_MAX_MESSAGE_BYTES


class SandboxSettings(BaseSettings):
    """How model code is confined (docs/security.md, "What a model can and cannot do on a
    device"). Read from `EDGEFLEET_SANDBOX_*` once, with the server's settings or by `model
    check`, and passed down to where a model is loaded."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_SANDBOX_", frozen=True, extra="ignore")

    # On a kernel without Landlock, TorchScript models are refused unless this is set: they
    # then run as an unprivileged user without sockets, but can read what that user can.
    allow_unconfined: bool = False
    # Seconds one run of a confined model (a batch, a camera frame's job, the warm-up) may take
    # before its worker is killed (SIGKILL): a forward that loops forever must not hold the
    # model, its requests and shutdown. The waiting requests answer DEADLINE_EXCEEDED and the
    # worker restarts for the next one (a kill counts towards the version's restart limit).
    # An ONNX run in the server process has the same limit: onnxruntime is told to stop.
    run_timeout_s: float = Field(default=30.0, gt=0)
    # Seconds a worker may take to start and load its model (torch's import, the unpickling
    # that runs a scripted `__setstate__`), on a slow device too.
    load_timeout_s: float = Field(default=120.0, gt=0)


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", frozen=True, extra="forbid")

    repository: Path = Path("models")
    # Insecure serving stays on loopback by default; bind wider on purpose.
    host: str = "127.0.0.1"
    # 0 picks a free port (tests); the bound port is logged and written to `port_file`.
    port: int = Field(default=8001, ge=0, le=65535)
    # KServe v2 HTTP/REST beside gRPC (Triton's customary 8000); -1 disables it, 0 picks one.
    http_port: int = Field(default=8000, ge=-1, le=65535)
    # Prometheus endpoint; -1 disables it.
    metrics_port: int = Field(default=8002, ge=-1, le=65535)
    port_file: Path | None = None
    # Models to load at start; None loads every model in the repository (newest version).
    models: tuple[str, ...] | None = None
    # Loaded versions kept per model: the active one plus the most recent previous ones, which
    # requests can still name (and the fleet can roll back to instantly).
    versions_kept: int = Field(default=1, ge=1, le=16)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    # Frames accepted but unanswered per camera stream, unless the stream asks for fewer.
    stream_max_in_flight: int = Field(default=4, ge=1, le=256)
    # Upper bound a stream may ask for.
    stream_max_in_flight_limit: int = Field(default=64, ge=1)
    # Concurrent unary/stream requests before new ones get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(default=1024, ge=1)
    # Seconds SIGTERM waits for in-flight work before cancelling it.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Seconds between SIGTERM and refusing new work, while readiness already says no (HTTP
    # 503, grpc.health NOT_SERVING): time for load balancers to stop sending requests.
    drain_delay_s: float = Field(default=0.0, ge=0)
    # "models" (Triton's strict readiness): ready only while every model the server is meant
    # to serve has a serving version. "server": ready once started, whatever the models do.
    readiness: Literal["models", "server"] = "models"
    # Scores in classification results ("score:index:label"): "model" as the manifest says
    # (softmax probabilities when its postprocess asks for softmax), "raw" the output value
    # itself, as Triton's classification extension gives it.
    classification_scores: Literal["model", "raw"] = "model"
    # Largest camera frame accepted, in pixels (default 8K); a JPEG or PNG declaring more is
    # refused from its header, before any decoding.
    max_frame_pixels: int = Field(default=DEFAULT_MAX_FRAME_PIXELS, ge=1)
    # Bytes the camera frames of all streams may hold at once (received, waiting, running,
    # decoded); past it BLOCK streams wait and live streams drop frames as overloaded.
    # 0: a quarter of the memory the hardware probe finds usable (server/frames/memory.py).
    frame_memory_budget_bytes: int = Field(default=0, ge=0)
    # gRPC's bandwidth-delay probing, which grows every stream's HTTP/2 receive window to many
    # MB: gRPC then receives several messages of a stream whose reader waits (a BLOCK stream at
    # the frame memory budget): 64 streams of raw 4K frames peaked at 6.8 GB RSS with it,
    # 2.1 GB without. Off, gRPC receives one message per stream ahead of the reader; a 720p
    # camera and a 30 MB KServe request cost no more (docs/benchmarks.md).
    grpc_bdp_probe: bool = False
    # Threads for preprocessing (decode, resize, normalise) shared by all streams.
    preprocess_threads: int = Field(default=2, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # TLS is on when cert and key are both set (server/tls.py); a client CA also demands client
    # certificates signed by it (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # When set, every call except health checks must carry `authorization: Bearer <token>`, on
    # the gRPC and the HTTP port alike.
    auth_token: SecretStr | None = None
    # The HTTP port uses the TLS files above when they are set; with TLS on, HTTP in plaintext
    # is refused unless this says so (a TLS-terminating proxy on the same host, say).
    http_plaintext: bool = False
    # Seconds a client has to send a request's headers (and an idle keep-alive connection
    # lives); slow-header connections are closed after it.
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    # Seconds a client has to send a whole request body (408 and closed after it).
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    # Bytes of request bodies the HTTP port receives and parses at once, over all connections;
    # past it new bodies get 429 at once. Never below max_message_bytes (one body always fits).
    http_body_budget_bytes: int = Field(default=DEFAULT_HTTP_BODY_BUDGET_BYTES, ge=1024)
    # Processes that parse large JSON request bodies, so the event loop (which serves gRPC and
    # the camera streams too) never does; 0 parses on the loop (tests of the parser only).
    http_parse_processes: int = Field(default=1, ge=0, le=16)
    # How model code is confined and how long a run may take (`EDGEFLEET_SANDBOX_*`).
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
