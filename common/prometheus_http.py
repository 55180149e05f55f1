"""Prometheus conventions shared by the edge server and the fleet controller: an instance registry
without `_created` series, with `process_*` metrics and a build-info series, served on an HTTP
endpoint that answers only /metrics (and /) and 404 elsewhere, behind the same token and TLS as
the process's other ports when it has them. No process-wide state is changed
(prometheus_client's `disable_created_metrics()` is global, so it is not used)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.metrics_core import Metric

from common.version import EDGEFLEET_VERSION

METRICS_PATHS = frozenset({"/", "/metrics"})
# Series a counter, histogram or summary family carries besides its values: only `_created`
# (the creation timestamp, which Prometheus does not need and which doubles the series count).
_CREATED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class InstanceRegistry(CollectorRegistry):
    """A registry for one server instance: collects without `_created` series."""

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.type not in _CREATED_TYPES:
                yield family
                continue
            created = family.name + "_created"
            kept = [sample for sample in family.samples if sample.name != created]
            if len(kept) == len(family.samples):
                yield family
                continue
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = kept
            yield copy


def instance_registry(component: str) -> InstanceRegistry:
    """A fresh registry with this process's `process_*` metrics and `edgefleet_build_info`."""
    registry = InstanceRegistry()
    ProcessCollector(registry=registry)
    Gauge(
        "edgefleet_build_info",
        "Always 1; the labels say which edgefleet build and component this is.",
        ("version", "component"),
        registry=registry,
    ).labels(EDGEFLEET_VERSION, component).set(1)
    return registry


# Given the request's `Authorization` header (None when absent): None to let it through, else
# the reason to refuse it with 401.
Authorize = Callable[[str | None], str | None]


def _guarded(
    app: Callable[..., Iterable[bytes]], authorize: Authorize | None
) -> Callable[..., Iterable[bytes]]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if authorize is not None:
            refusal = authorize(environ.get("HTTP_AUTHORIZATION"))
            if refusal is not None:
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
                )
                return [refusal.encode() + b"\n"]
        if environ.get("PATH_INFO", "/") not in METRICS_PATHS:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are on /metrics\n"]
        return app(environ, start_response)

    return guarded


def start_metrics_http(
    port: int,
    addr: str,
    registry: CollectorRegistry,
    *,
    authorize: Authorize | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> WSGIServer:
    """Serve `registry` on addr:port (0: any free port) from a daemon thread; `shutdown()` and
    `server_close()` the returned server to stop it. Raises OSError when the port is taken.

    `authorize` checks every request's Authorization header (the process's auth token);
    `ssl_context` serves HTTPS (with client certificates when the context demands them). The
    TLS handshake runs on the request's own thread, so a client that never finishes it cannot
    hold up the accept loop."""

    class Server(ThreadingWSGIServer):
        """Per call, so the address family (IPv4 or IPv6) follows `addr`."""

    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    addr = str(sockaddr[0])
    app = _guarded(make_wsgi_app(registry), authorize)
    httpd = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
