"""KServe v2 HTTP/REST (the Triton HTTP protocol) over InferenceCore: a thin transport beside gRPC.

aiohttp is the server: an asyncio-native HTTP/1.1 server that runs on the event loop the core
already owns (no second loop or thread pool, unlike a WSGI server), mature, typed and without
a framework's dependency tree. Every handler translates and delegates to the same core the gRPC
servicer uses. Domain errors map to HTTP statuses in one table; anything else is logged and
answered 500 with a generic message.

Endpoints: /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}],
.../ready, .../config, .../stats, .../infer (JSON tensors and the binary-tensor extension),
/v2/repository/index, /v2/repository/models/{name}/load|unload.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from common.version import EDGEFLEET_VERSION
from server.core import InferenceCore
from server.errors import INTERNAL_MESSAGE, EdgeError, InvalidInput
from server.http_api import json_tensors
from server.http_api.guard import token_guard
from server.http_api.responses import error_response, json_response
from server.security import TokenCheck
from server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVER_NAME = "edgefleet"
EXTENSIONS = ["classification", "model_repository", "statistics", "binary_tensor_data"]


def status_for(error: BaseException) -> int:
    """The HTTP status a domain error declares (`server.errors`); 500 for anything else."""
    return error.http_status if isinstance(error, EdgeError) else 500


@web.middleware
async def edge_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        status = status_for(exc)
        if status == 500:
            log.error("unexpected error in %s %s", request.method, request.path, exc_info=exc)
        message = str(exc) if status != 500 else INTERNAL_MESSAGE
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(message, status, headers)


class KServeHttp:
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def app(self, max_body_bytes: int, token: TokenCheck | None = None) -> web.Application:
        middlewares = [edge_errors] if token is None else [edge_errors, token_guard(token)]
        app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        app.add_routes([
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get(model, self.metadata), web.get(versioned, self.metadata),
            web.get(model + "/ready", self.model_ready),
            web.get(versioned + "/ready", self.model_ready),
            web.get(model + "/config", self.config), web.get(versioned + "/config", self.config),
            web.get(model + "/stats", self.stats), web.get(versioned + "/stats", self.stats),
            web.get("/v2/models/stats", self.stats),
            web.post(model + "/infer", self.infer), web.post(versioned + "/infer", self.infer),
            web.post("/v2/repository/index", self.index),
            web.post("/v2/repository/models/{name}/load", self.load),
            web.post("/v2/repository/models/{name}/unload", self.unload),
        ])  # fmt: skip
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
        return json_response(json_tensors.model_metadata(info))

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self._core.model_ready(request.match_info["name"], _version(request))
        return web.Response(status=200 if ready else 400)

    async def config(self, request: web.Request) -> web.Response:
        info = self._core.model_info(request.match_info["name"], _version(request))
        return json_response(json_tensors.model_config(info))

    async def stats(self, request: web.Request) -> web.Response:
        stats = self._core.statistics(request.match_info.get("name", ""), _version(request))
        return json_response(json_tensors.statistics(stats))

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        header_length = request.headers.get("Inference-Header-Content-Length")
        parsed = json_tensors.infer_request(
            body, header_length, request.match_info["name"], _version(request)
        )
        response = await self._core.infer(parsed.request)
        payload, json_length = json_tensors.infer_response(response, parsed.binary)
        headers = {}
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
            content_type = "application/octet-stream"
        else:
            content_type = "application/json"
        return web.Response(body=payload, headers=headers, content_type=content_type)

    async def index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        entries = self._core.repository_index(ready_only=bool(body.get("ready", False)))
        return json_response([
            {"name": entry.name, "version": entry.version, "state": entry.state,
             "reason": entry.reason}
            for entry in entries
        ])  # fmt: skip

    async def load(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        parameters = body.get("parameters", {}) or {}
        version = parameters.get("version")
        await self._core.load_model(
            request.match_info["name"], None if version is None else str(version)
        )
        return json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        await self._core.unload_model(request.match_info["name"])
        return json_response({})


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


async def _json_body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON object")
    return value


class HttpServer:
    """The HTTP listener; started after the core, stopped before it."""

    def __init__(
        self,
        core: InferenceCore,
        settings: ServerSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token: TokenCheck | None = None,
    ) -> None:
        self._runner = web.AppRunner(
            KServeHttp(core).app(settings.max_message_bytes, token),
            access_log=None,
            handle_signals=False,
        )
        self._host = settings.host
        self._port = settings.http_port
        self._ssl_context = ssl_context
        self.port = 0

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, reuse_port=False, ssl_context=self._ssl_context
        )
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
