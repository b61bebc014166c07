"""The standalone supervisor process: `apikeyrouter serve` and `apikeyrouter demo`.

    root (one_for_one)
    ├── providers → provider:<id> (rest_for_one) → provider actor, keys (one_for_one) → key:<id> …
    ├── router
    ├── proxy        our HTTP/1.1 server (h11 on trio) serving the OpenAI-compatible app
    └── debug        the debug channel on a Unix socket (temporary: a socket problem never escalates)

Signals: SIGTERM/SIGINT stop accepting connections, let requests in flight (streams included) finish
within `server.grace_period`, then stop the tree in reverse order and exit 0; a second one exits at
once. SIGHUP reloads the config file: keys and providers added, removed or changed at run time; an
invalid file is rejected with its errors and the running config stays.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import structlog
import trio

from apikeyrouter.adapters.tokens import encoding_of, warm
from apikeyrouter.config import RouterConfig, bind_allowed, client_identities, load_config
from apikeyrouter.debug.server import DebugServer
from apikeyrouter.errors import ConfigError
from apikeyrouter.kernel.spec import ChildSpec, Restart
from apikeyrouter.proxy.app import ProxyApp
from apikeyrouter.proxy.server import Listening, ProxyServer, ServerLimits
from apikeyrouter.runtime import ApiKeyRouter
from apikeyrouter.store.open import DEFAULT_SQLITE_PATH, store_from_config

__all__ = ["Started", "run_standalone"]

log = structlog.get_logger("apikeyrouter.serve")
# `[server]` fields read once, at start (the listening socket and its connections, the shutdown grace, the
# decision log's size): a reload cannot change them, and says so.
_READ_AT_START = (
    "host",
    "port",
    "grace_period",
    "decision_retention",
    "max_header_bytes",
    "header_read_timeout",
    "keep_alive_timeout",
    "preload_tokenizers",
)


@attrs.frozen
class Started:
    """What a running standalone process tells whoever started it."""

    url: str
    port: int
    debug_socket: str | None
    router: ApiKeyRouter


async def run_standalone(
    config: RouterConfig,
    *,
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_started: Callable[[Started], None] | None = None,
    on_reloaded: Callable[[Mapping[str, Sequence[str]]], None] | None = None,
    before_forced_exit: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
    handle_signals: bool = True,
    stop: trio.Event | None = None,
) -> None:
    """Run the whole process until a signal (or `stop`) ends it. Config errors were caught by the caller.

    `on_reloaded` gets what each successful SIGHUP reload changed (`ApiKeyRouter.apply_config`'s report);
    `before_forced_exit` runs just before a second signal ends the process at once (no cleanup runs then).
    """
    refusal = bind_allowed(config)
    if refusal is not None:
        raise ConfigError(refusal, path="config.server.host")
    stop = stop if stop is not None else trio.Event()  # an Event refuses to be a bool
    async with trio.open_nursery() as nursery:
        signals_seen = 0

        async def on_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal signals_seen
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
                task_status.started()  # handlers are installed: only now may we say we are serving
                async for signum in received:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(reload, router)
                        continue
                    signals_seen += 1
                    if signals_seen == 1:
                        log.info(
                            "shutdown_requested",
                            signal=signal.Signals(signum).name,
                            grace=config.server.grace_period,
                        )
                        stop.set()
                    else:
                        # At once means at once: children are shielded for their graceful stop, so
                        # cancelling would still wait out the graces. The OS closes the sockets.
                        log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                        sys.stderr.flush()
                        if before_forced_exit is not None:
                            before_forced_exit()
                        os._exit(1)

        reload_lock = trio.Lock()

        async def reload(router: ApiKeyRouter) -> None:
            async with reload_lock:
                if config_path is None:
                    log.warning("reload_ignored", reason="no config file to reload")
                    return
                try:
                    new = load_config(config_path, env)
                    refused = bind_allowed(new)
                    if refused is not None:
                        raise ConfigError(refused, path="config.server.host")
                except ConfigError as exc:
                    log.error("reload_rejected", errors=list(exc.errors), config=str(config_path))
                    return
                fixed = [f for f in _READ_AT_START if getattr(new.server, f) != getattr(router.config.server, f)]
                if fixed:
                    log.warning("reload_partial", reason=f"server.{', server.'.join(fixed)}: changes need a restart")
                # Tokens first: a token removed because it leaked stops working with this reload.
                app.client_tokens = tuple(new.server.client_tokens)
                app.clients = client_identities(new)
                app.admin_token = new.server.admin_token
                app.metrics_require_admin = new.server.metrics_require_admin
                app.stream_idle_timeout = new.server.stream_idle_timeout
                app.max_body_bytes = new.server.max_body_bytes
                app.request_deadline = float(new.server.request_deadline)
                try:
                    report = await router.apply_config(new)
                except Exception as exc:  # the running process must outlive a reload that went wrong
                    log.error("reload_failed", error=f"{type(exc).__name__}: {exc}", config=str(config_path))
                    return
                if on_reloaded is not None:
                    on_reloaded(report)

        # serve keeps its state on disk unless told otherwise: SQLite next to its config file (run
        # without a config file, as tests and embedders do, it keeps the library's memory default).
        store_cfg = config.store
        if store_cfg.kind is None and store_cfg.path is None and config_path is not None:
            store_cfg = attrs.evolve(store_cfg, path=Path(config_path).parent / DEFAULT_SQLITE_PATH)
        default_kind = "sqlite" if config_path is not None else "memory"
        store = store_from_config(store_cfg, default_kind=default_kind)
        async with ApiKeyRouter(config, store=store) as router:
            # Before listening, not in the first request: tiktoken builds a table holding the GIL (~0.2 s
            # quiet, over 1 s on a loaded machine), which freezes the event loop even from a worker thread.
            if config.server.preload_tokenizers:
                await trio.to_thread.run_sync(warm, encodings_needed(config))
            server = config.server
            app = ProxyApp(
                router,
                client_tokens=server.client_tokens,
                clients=client_identities(config),
                admin_token=server.admin_token,
                max_body_bytes=server.max_body_bytes,
                request_deadline=server.request_deadline,
                stream_idle_timeout=server.stream_idle_timeout,
                metrics_require_admin=server.metrics_require_admin,
            )
            grace = server.grace_period
            limits = ServerLimits(
                max_header_bytes=server.max_header_bytes,
                header_read_s=server.header_read_timeout,
                keep_alive_s=server.keep_alive_timeout,
            )
            proxy = await router.add_service(
                ChildSpec(
                    "proxy",
                    lambda: ProxyServer(app, server.host, server.port, grace=grace, limits=limits),
                    shutdown=grace + 5,
                )
            )
            assert isinstance(proxy, ProxyServer) and proxy.listening is not None
            listening: Listening = proxy.listening
            socket_path: str | None = None
            if config.debug.enabled:
                path = str(config.debug.socket)
                await router.add_service(
                    ChildSpec("debug", lambda: DebugServer(router, path), restart=Restart.TEMPORARY, shutdown=2)
                )
                socket_path = path
            if handle_signals:  # from here on reload() has what it needs (the app, the router)
                await nursery.start(on_signals)
            started = Started(listening.url, listening.port, socket_path, router)
            log.info(
                "serving",
                url=listening.url,
                debug_socket=socket_path,
                providers=len(config.providers),
                keys=len(config.keys),
                config=config.source,
            )
            if on_started is not None:
                on_started(started)
            task_status.started(started)
            await stop.wait()
            log.info("stopping", in_flight=sum(k["in_flight"] for k in router.keys()))
        log.info("stopped")
        nursery.cancel_scope.cancel(reason="the router has stopped")


def encodings_needed(config: RouterConfig) -> list[str]:
    """The tokenizer encodings the configured providers' models count with (both if one takes any model)."""
    if any(not p.models for p in config.providers):
        return ["o200k_base", "cl100k_base"]
    return sorted({encoding_of(model) for p in config.providers for model in p.models})


def describe(started: Started, config: RouterConfig) -> list[str]:
    """Lines `serve` prints on stdout once it listens."""
    lines = [f"apikeyrouter listening on {started.url}  (OpenAI-compatible: {started.url}/v1)"]
    if started.debug_socket:
        lines.append(f"debug channel: {started.debug_socket}  (apikeyrouter inspect --socket {started.debug_socket})")
    lines.append(f"{len(config.providers)} providers, {len(config.keys)} keys; objective {config.routing.objective}")
    return lines
