"""Serving the proxy with hypercorn's trio worker, and `ProxyServer`, the actor that does it in the tree.

Graceful shutdown is hypercorn's own, which does what we need: when the trigger fires it closes the
listening sockets (new connections are refused), closes idle keep-alive connections, lets in-flight
requests (streams included) finish and closes their connections after the response; whatever is still
running `grace` seconds later is cancelled (an open stream then gets a final SSE error event).

Tuning, for latency: HTTP/1.1 only (no ALPN negotiation, h11), no access log (`ProxyApp` logs one
structlog event per request instead), no Server header, long keep-alive so clients and load balancers
reuse connections, and a deep accept backlog for bursts. TCP_NODELAY is set on every socket by trio and
hypercorn.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Never, assert_never

import attrs
import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from apikeyrouter.errors import ConfigError
from apikeyrouter.kernel.actor import Actor
from apikeyrouter.proxy.app import ProxyApp

__all__ = ["Listening", "ProxyServer", "hypercorn_config", "is_loopback", "serve_proxy"]

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


def hypercorn_config(
    host: str,
    port: int,
    *,
    grace: float,
    keep_alive: float = 75.0,
    backlog: int = 2048,
    access_log: bool = False,
) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = grace
    # Longer than the usual load balancer idle timeout (60 s), so the balancer closes first.
    config.keep_alive_timeout = keep_alive
    config.keep_alive_max_requests = 1 << 30
    config.backlog = backlog
    config.alpn_protocols = ["http/1.1"]
    config.include_server_header = False
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    # Hypercorn's own messages go through the standard logging tree instead of a handler it installs.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_proxy(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: ShutdownTrigger | None = None,
    grace: float = 10.0,
    config: Config | None = None,
) -> None:
    """Serve an ASGI app until `shutdown_trigger` returns, then drain for up to `grace` seconds.

    Start it with `listening = await nursery.start(serve_proxy, app, host, port, ...)`: `listening.port` is
    the bound port. A `ProxyApp` without client tokens (open inference) may only bind a loopback address.
    """
    if isinstance(app, ProxyApp) and not app.client_tokens and not app.clients and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host}: inference would be open to the network. Configure client tokens "
            "(server.client_tokens or server.client_tokens_env) or bind 127.0.0.1",
            path="config.server.host",
        )
    if config is None:
        config = hypercorn_config(host, port, grace=grace)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=shutdown_trigger, mode="asgi")
        )
        # hypercorn reports "http://HOST:PORT" for each bound socket, with the real port.
        bound_host, _, bound_port = binds[0].removeprefix("http://").rpartition(":")
        listening = Listening(bound_host.strip("[]"), int(bound_port))
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
        config: Config | None = None,
    ) -> None:
        super().__init__(name, mailbox=16)
        self.app = app
        self.host = host
        self.port = port
        self.grace = grace
        self.config = config
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
            config=self.config,
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
