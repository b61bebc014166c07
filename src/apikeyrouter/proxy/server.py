"""Serving the proxy with our HTTP/1.1 server (`http11`), and `ProxyServer`, the actor that does it in the tree.

Graceful shutdown: when the trigger fires the listening sockets close (new connections are refused), idle
keep-alive connections close, requests in flight (streams included) finish and their connections close
after the answer; whatever is still running `grace` seconds later is cancelled (an open stream then gets a
final SSE error event).

Tuning, for latency: HTTP/1.1 only, no access log (`ProxyApp` logs one structlog event per request
instead), no Server header, long keep-alive so clients and load balancers reuse connections, a deep accept
backlog for bursts, TCP_NODELAY on every accepted socket (trio sets it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Never, assert_never

import attrs
import structlog
import trio

from apikeyrouter.errors import ConfigError
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.proxy._conn import serve_http
from apikeyrouter.proxy.app import ProxyApp
from apikeyrouter.proxy.http11 import Handler, ServerLimits

__all__ = ["Listening", "ProxyServer", "ServerLimits", "is_loopback", "serve_proxy"]

log = structlog.get_logger("apikeyrouter.proxy")

ShutdownTrigger = Callable[[], Awaitable[Any]]


@attrs.frozen
class Listening:
    """Where a proxy accepts connections: the bound host and port (the real one when 0 was asked for)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve anywhere


async def serve_proxy(
    app: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: ShutdownTrigger | None = None,
    grace: float = 10.0,
    limits: ServerLimits | None = None,
) -> None:
    """Serve `app` (a `ProxyApp`, or any `http11.Handler`) until `shutdown_trigger` returns, then drain for
    up to `grace` seconds.

    Start it with `listening = await nursery.start(serve_proxy, app, host, port, ...)`: `listening.port` is
    the bound port. A `ProxyApp` without client tokens (open inference) may only bind a loopback address.
    """
    if isinstance(app, ProxyApp) and not app.client_tokens and not app.clients and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host}: inference would be open to the network. Configure client tokens "
            "(server.client_tokens or server.client_tokens_env) or bind 127.0.0.1",
            path="config.server.host",
        )
    limits = limits if limits is not None else ServerLimits()
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=limits.backlog)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    listening = Listening(bound_host, bound_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_http, app, listeners, limits=limits, shutdown_trigger=shutdown_trigger, grace=grace)
        )
        log.info("proxy_listening", url=listening.url, grace=grace)
        task_status.started(listening)


class ProxyServer(Actor[Never]):
    """The proxy as a child of the supervision tree. `stop()` is a graceful shutdown.

    Give its `ChildSpec` a `shutdown` longer than `grace`, so the supervisor lets the drain finish.
    """

    kind = "proxy"

    def __init__(
        self,
        app: ProxyApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        grace: float = 10.0,
        name: str = "proxy",
        limits: ServerLimits | None = None,
    ) -> None:
        super().__init__(name, mailbox=16)
        self.app = app
        self.host = host
        self.port = port
        self.grace = grace
        self.limits = limits
        self.listening: Listening | None = None
        self._shutdown = trio.Event()

    async def pre_start(self) -> None:
        self.listening = await self.nursery.start(self._serve)

    async def _serve(self, *, task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_proxy(
            self.app,
            self.host,
            self.port,
            task_status=task_status,
            shutdown_trigger=self._shutdown.wait,
            grace=self.grace,
            limits=self.limits,
        )
        if not self._shutdown.is_set():
            raise RuntimeError(f"proxy server on {self.listening} stopped without being asked to")

    def receive(self, msg: Never) -> None:
        assert_never(msg)  # no messages: where it listens is `listening` (also its state summary)

    async def post_stop(self) -> None:
        # The serving task is in this actor's nursery: the actor finishes when the drain does.
        self._shutdown.set()
        self.app.dashboard.close()  # open dashboards would hold the drain for the whole grace period

    def state_summary(self) -> Listening | None:
        return self.listening
