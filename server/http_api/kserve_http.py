"""KServe v2 HTTP/REST (the Triton HTTP protocol) over InferenceCore: a thin transport beside gRPC.

aiohttp is the server: an asyncio-native HTTP/1.1 server that runs on the event loop the core
already owns (no second loop or thread pool, unlike a WSGI server), mature, typed and without
a framework's dependency tree. Every handler translates and delegates to the same core the gRPC
servicer uses. Domain errors map to HTTP statuses in one table (`server.http_api.status`); the
token and TLS rules are the gRPC port's (`server.security`, `server.tls`).

Endpoints: /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}],
.../ready, .../config, .../stats, .../infer (JSON tensors and the binary-tensor extension),
/v2/repository/index, /v2/repository/models/{name}/load|unload. Shared memory, trace and log
settings answer a JSON "not supported" error, as their gRPC counterparts do.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from common.version import EDGEFLEET_VERSION
from server.core import InferenceCore
from server.errors import InvalidInput, Unsupported
from server.grpc_api import convert_kserve as convert
from server.http_api import infer_body, triton_json
from server.http_api.body import BodyBudget, BodyLimit, read_body
from server.http_api.drain import DrainGate
from server.http_api.guard import token_guard
from server.http_api.infer_body import OutputEntry, ParsedInfer
from server.http_api.parse_pool import ON_LOOP_JSON_BYTES, ON_LOOP_JSON_VALUES, ParsePool
from server.http_api.responses import json_response
from server.http_api.status import json_errors
from server.kserve_parameters import load_version, request_options
from server.models.tensors import kserve_datatype
from server.models.types import InferRequest, InferResponse, RequestedOutput
from server.security import TokenCheck
from server.settings import ServerSettings

SERVER_NAME = "edgefleet"
EXTENSIONS = ["classification", "model_repository", "statistics", "binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
# Bodies of the repository endpoints: a few parameters, never megabytes.
CONTROL_BODY_BYTES = 64 * 1024
# Seconds unread body bytes are drained after an early answer, before the connection closes.
LINGER_S = 2.0
# Triton's paths for features edgefleet does not offer, and what to call them in the answer.
UNSUPPORTED_PATHS = {
    "/v2/systemsharedmemory": "system shared memory",
    "/v2/cudasharedmemory": "CUDA shared memory",
    "/v2/trace": "trace settings",
    "/v2/logging": "log settings",
}


class KServeHttp:
    def __init__(
        self, core: InferenceCore, settings: ServerSettings, pool: ParsePool, gate: DrainGate
    ) -> None:
        self._core = core
        self._pool = pool
        self._gate = gate
        self._infer_limit = BodyLimit(settings.max_message_bytes, settings.http_body_timeout_s)
        self._control_limit = BodyLimit(CONTROL_BODY_BYTES, settings.http_body_timeout_s)
        self._budget = BodyBudget(max(settings.http_body_budget_bytes, settings.max_message_bytes))

    def app(self, token: TokenCheck | None = None) -> web.Application:
        middlewares: list[Middleware] = [json_errors, self._gate.middleware]
        if token is not None:
            middlewares.append(token_guard(token))
        # Bodies are read by `server.http_api.body` with their own limits, never by aiohttp.
        app = web.Application(middlewares=middlewares, client_max_size=CONTROL_BODY_BYTES)
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        app.add_routes([
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.stats),
            web.get(model, self.metadata), web.get(versioned, self.metadata),
            web.get(model + "/ready", self.model_ready),
            web.get(versioned + "/ready", self.model_ready),
            web.get(model + "/config", self.config), web.get(versioned + "/config", self.config),
            web.get(model + "/stats", self.stats), web.get(versioned + "/stats", self.stats),
            web.post(model + "/infer", self.infer), web.post(versioned + "/infer", self.infer),
            web.post("/v2/repository/index", self.index),
            web.post("/v2/repository/models/{name}/load", self.load),
            web.post("/v2/repository/models/{name}/unload", self.unload),
            web.route("*", model + "/trace/setting", _unsupported("trace settings")),
        ])  # fmt: skip
        for prefix, feature in UNSUPPORTED_PATHS.items():
            app.router.add_route("*", prefix + "{tail:(/.*)?}", _unsupported(feature))
        return app

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._core.live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._core.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            {"name": SERVER_NAME, "version": EDGEFLEET_VERSION, "extensions": EXTENSIONS}
        )

    async def metadata(self, request: web.Request) -> web.Response:
        info = self._core.model_info(request.match_info["name"], _version(request))
        return json_response(triton_json.model_metadata(info))

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self._core.model_ready(request.match_info["name"], _version(request))
        return web.Response(status=200 if ready else 400)

    async def config(self, request: web.Request) -> web.Response:
        info = self._core.model_info(request.match_info["name"], _version(request))
        return json_response(triton_json.model_config(info))

    async def stats(self, request: web.Request) -> web.Response:
        stats = self._core.statistics(request.match_info.get("name", ""), _version(request))
        return json_response(triton_json.statistics(stats))

    async def infer(self, request: web.Request) -> web.Response:
        # The body's bytes stay in the budget until the answer is written: binary inputs are
        # views of them.
        async with read_body(request, self._infer_limit, self._budget) as body:
            header, blobs = infer_body.split_body(body, request.headers.get(HEADER_LENGTH))
            parsed = await self._pool.run(
                len(header) <= ON_LOOP_JSON_BYTES, infer_body.parse_infer, header, blobs
            )
            options = request_options(parsed.parameters)
            response = await self._core.infer(
                InferRequest(
                    model_name=request.match_info["name"],
                    model_version=_version(request),
                    id=parsed.id,
                    inputs=parsed.inputs,
                    outputs=tuple(
                        RequestedOutput(o.name, o.classification) for o in parsed.outputs
                    ),
                ),
                timeout_s=options.timeout_s,
            )
            payload, json_length = await self._encode(response, parsed)
        if json_length is None:
            return web.Response(body=payload, headers={"Content-Type": "application/json"})
        return web.Response(
            body=payload,
            headers={HEADER_LENGTH: str(json_length), "Content-Type": "application/octet-stream"},
        )

    async def _encode(
        self, response: InferResponse, parsed: ParsedInfer
    ) -> tuple[bytes, int | None]:
        """The body, and the JSON header's length when binary blobs follow it."""
        entries, blobs = response_entries(response, parsed)
        header = await self._pool.run(
            infer_body.json_value_count(entries) <= ON_LOOP_JSON_VALUES,
            infer_body.encode_header,
            response.model_name, response.model_version, response.id, entries,
        )  # fmt: skip
        if not blobs:
            return header, None
        return header + b"".join(blobs), len(header)

    async def _control_body(self, request: web.Request) -> dict[str, Any]:
        """A repository endpoint's optional JSON object body."""
        async with read_body(request, self._control_limit, self._budget) as data:
            if not data.strip():
                return {}
            value = infer_body.load_json(data, "request body")
        if not isinstance(value, dict):
            raise InvalidInput("request body must be a JSON object")
        return value

    async def index(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("index parameter 'ready' must be true or false")
        entries = self._core.repository_index(ready_only=ready)
        return json_response(triton_json.repository_index(entries))

    async def load(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        version = load_version(infer_body.parameters_of(body, "load request"))
        await self._core.load_model(request.match_info["name"], version)
        return json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        # Triton's clients send {"parameters": {"unload_dependents": false}}: accepted, and
        # a pipeline's members stay loaded either way (they may serve on their own).
        infer_body.parameters_of(await self._control_body(request), "unload request")
        await self._core.unload_model(request.match_info["name"])
        return json_response({})


def response_entries(
    response: InferResponse, parsed: ParsedInfer
) -> tuple[list[OutputEntry], list[bytes]]:
    """Each output as JSON values or as a binary blob, as the request asked."""
    binary = {wanted.name: wanted.binary for wanted in parsed.outputs}
    entries: list[OutputEntry] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        shape = list(output.array.shape)
        if binary.get(output.name, parsed.all_binary):
            tensor, raw = convert.output_to_pb(output)
            entries.append(OutputEntry(output.name, tensor.datatype, shape, binary_size=len(raw)))
            blobs.append(raw)
        else:
            datatype = "BYTES" if output.is_bytes else kserve_datatype(str(output.array.dtype))
            entries.append(OutputEntry(output.name, datatype, shape, values=output.array))
    return entries, blobs


def _unsupported(feature: str) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise Unsupported(f"{feature} is not supported by edgefleet")

    return refuse


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


class HttpServer:
    """The HTTP listener: bound before the models load (a busy port is reported at once),
    serving once they are loaded (connections made meanwhile wait), draining before the core
    stops."""

    def __init__(
        self,
        core: InferenceCore,
        settings: ServerSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token: TokenCheck | None = None,
    ) -> None:
        self._pool = ParsePool(
            settings.http_parse_processes, on_restart=core.metrics.http_parse_restarts.inc
        )
        self._gate = DrainGate()
        self._runner = web.AppRunner(
            KServeHttp(core, settings, self._pool, self._gate).app(token),
            access_log=None,
            handle_signals=False,
            # aiohttp runs its keep-alive timer from the moment a connection opens until a
            # request's headers are in: the header timeout (and the idle keep-alive one).
            keepalive_timeout=settings.http_header_timeout_s,
            # After an early answer (413, 429, 408), unread body bytes are drained this long
            # (so the client reads the answer), then the connection is closed.
            lingering_time=LINGER_S,
            auto_decompress=False,
            # Requests still running when the listener closes (after the drain) are cancelled.
            shutdown_timeout=1.0,
        )
        self._host = settings.host
        self._port = settings.http_port
        self._ssl_context = ssl_context
        self._socket: socket.socket | None = None
        self.port = 0

    def bind(self) -> int:
        """Take the port (OSError if it is busy); nothing is served until `start`."""
        family, kind, protocol, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, protocol)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self) -> None:
        assert self._socket is not None, "bind() first"
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket, ssl_context=self._ssl_context).start()

    def refuse_new(self) -> None:
        """From now on, requests other than health checks get 503."""
        self._gate.refusing = True

    async def wait_idle(self, timeout_s: float) -> None:
        await self._gate.wait_idle(timeout_s)

    async def stop(self) -> None:
        await self._runner.cleanup()
        if self._socket is not None:
            self._socket.close()  # bound but never served (a start that failed)
            self._socket = None
        await self._pool.close()
