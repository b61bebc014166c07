"""`DebugServer`: the debug channel, an actor serving newline-delimited JSON on a Unix socket.

It runs as a child of the supervision tree (`ChildSpec("debug", lambda: DebugServer(router, path))`) or
on its own (`open_debug_channel`). Its mailbox takes no messages (its counters are its state summary);
connections are served by tasks in the actor's nursery, so nothing a client does reaches a receive loop.

A client can never hold up the router or a key actor:
- answers are built from synchronous reads of published snapshots (`RouterAPI.keys()`, `tree()`, ...);
- events reach a subscriber through the `EventBus`'s bounded per-subscriber queue, and the bus never waits:
  a subscriber that falls behind is dropped (and told `lagged`, best effort);
- every write to a client has a deadline (`send_timeout`); a client that stops reading is disconnected;
- at most `max_clients` connections are served at once; the next gets a `busy` error line and is closed.

The socket is created with mode 0600 without a window where it is more open: it is bound inside a fresh
mode-0700 directory next to the target, chmod-ed, then renamed into place. (A temporary umask would do
too, but the umask is process-wide and would leak into files other threads create meanwhile.) The rename
also replaces a stale socket atomically. A socket someone still listens on is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Never, assert_never

import attrs
import structlog
import trio

from apikeyrouter.debug.paths import SOCKET_PATH_MAX, default_socket_path, ensure_socket_dir, probe_socket
from apikeyrouter.debug.protocol import (
    MAX_LINE,
    ErrorCode,
    LineReader,
    LineTooLong,
    encode_line,
    error_response,
    find_node,
    node_to_json,
    ok_response,
    to_jsonable,
)
from apikeyrouter.debug.requests import BadArgument, BadRequest, Request, int_arg, parse_request, str_arg, strs_arg
from apikeyrouter.errors import DebugChannelError, DebugSocketInUse, UnknownKey
from apikeyrouter.kernel.actor import Actor, ActorRef
from apikeyrouter.messages.debug import DebugServerStatus
from apikeyrouter.observe import KINDS, SubscriberLagged, event_json, unknown_kinds
from apikeyrouter.runtime.api import RouterAPI
from apikeyrouter.runtime.views import tree_to_json

__all__ = ["OPS", "DebugServer", "open_debug_channel"]

log = structlog.get_logger("apikeyrouter.debug")

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF = 0.1

OPS: dict[str, str] = {
    "ping": "liveness and server counters",
    "help": "this list",
    "tree": 'the supervision tree; {"state": true} adds each actor\'s state',
    "actor": '{"id": NAME or "a/b/c" path}: one actor in full, with its state and last crash',
    "keys": "every key's entry (ids and fingerprints only)",
    "key": '{"id": KEY}: one key\'s entry',
    "transitions": '{"key": KEY, "limit": N (default 50)}: recent lifecycle transitions of a key',
    "decisions": '{"limit": N (default 20)}: latest routing decisions with explanations',
    "policies": "the live policies, their latest changes (who, when, before/after) and every budget",
    "subscribe": '{"events": [KIND or PREFIX, ...]} (optional): stream events until the client leaves',
}


class DebugServer(Actor[Never]):
    kind = "debug"

    def __init__(
        self,
        router: RouterAPI,
        path: str | os.PathLike[str] | None = None,
        *,
        name: str = "debug",
        max_clients: int = 32,
        max_line: int = MAX_LINE,
        send_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        subscriber_queue: int = 256,
        mailbox: int = 16,
    ) -> None:
        super().__init__(name, mailbox=mailbox)
        if max_clients < 1 or max_line < 1 or subscriber_queue < 1:
            raise ValueError("max_clients, max_line and subscriber_queue must be positive")
        if not (send_timeout > 0 and idle_timeout > 0):
            raise ValueError("send_timeout and idle_timeout must be positive (seconds)")
        self.router = router
        self.path = Path(os.path.abspath(path if path is not None else default_socket_path()))
        self.max_clients = max_clients
        self.max_line = max_line
        self.send_timeout = send_timeout
        self.idle_timeout = idle_timeout
        self.subscriber_queue = subscriber_queue
        self._sock: trio.socket.SocketType | None = None
        self._inode: tuple[int, int] | None = None
        self._clients = 0
        self._subscribers = 0
        self._connections_total = 0
        self._requests_total = 0
        self._refused_busy = 0
        self._dropped_slow = 0

    # -- the socket -----------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the listening socket (idempotent). Raises `DebugSocketInUse` if a live process has it."""
        if self._sock is not None:
            return
        final = str(self.path)
        if len(os.fsencode(final)) > SOCKET_PATH_MAX:
            raise DebugChannelError(
                f"socket path too long for a Unix socket ({SOCKET_PATH_MAX} bytes max): {final}", path=final
            )
        self._refuse_to_replace(final)
        ensure_socket_dir(self.path)  # the default place's private directory may not exist yet
        try:
            tmpdir = tempfile.mkdtemp(prefix=".a", dir=self.path.parent)  # mode 0700
        except OSError as exc:
            raise DebugChannelError(f"cannot create the debug socket at {final}: {exc.strerror}", path=final) from exc
        tmp = os.path.join(tmpdir, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(64)
            self._refuse_to_replace(final)  # again, just before: narrows the race with a concurrent start
            os.rename(tmp, final)
            info = os.stat(final)
            if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o600:
                raise DebugChannelError(f"{final} is not a mode-0600 socket after binding; giving up", path=final)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(tmpdir)
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._inode = (info.st_dev, info.st_ino)
        log.info("debug_channel_listening", path=final)

    def _refuse_to_replace(self, final: str) -> None:
        found = probe_socket(final)
        match found:
            case "live":
                raise DebugSocketInUse(final)
            case "not_socket":
                raise DebugChannelError(f"{final} exists and is not a socket; refusing to replace it", path=final)
            case "forbidden":
                raise DebugChannelError(f"{final} exists and we may not connect to it; not replacing it", path=final)
            case "stale":
                log.info("debug_channel_replacing_stale_socket", path=final)
            case "missing":
                pass
            case _:
                assert_never(found)

    def close_socket(self) -> None:
        """Stop listening and remove the socket file, if it is still ours (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        try:
            info = os.stat(self.path)
        except OSError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # -- actor ----------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ActorRef[Never]] = trio.TASK_STATUS_IGNORED) -> None:
        # Bound outside the actor's nursery so a bind error reaches the starter as itself, not in a group.
        self.bind()
        try:
            await super().run(task_status=task_status)
        finally:
            self.close_socket()

    async def pre_start(self) -> None:
        self.nursery.start_soon(self._accept_loop)

    async def post_stop(self) -> None:
        # The mailbox is closed; connections and the accept loop are background work that would otherwise
        # run forever. Subscribers see the connection end.
        self.nursery.cancel_scope.cancel(reason=f"debug server {self.name} stopping")

    def receive(self, msg: Never) -> None:
        assert_never(msg)  # no messages: the status is the state summary

    def state_summary(self) -> DebugServerStatus:
        return self.server_status()

    def server_status(self) -> DebugServerStatus:
        return DebugServerStatus(
            path=str(self.path),
            clients=self._clients,
            max_clients=self.max_clients,
            subscribers=self._subscribers,
            connections_total=self._connections_total,
            requests_total=self._requests_total,
            refused_busy=self._refused_busy,
            dropped_slow=self._dropped_slow,
        )

    # -- connections ----------------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        listener = trio.SocketListener(self._sock)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of file descriptors or memory: a pressure to wait out, not a crash that would burn
                # the supervisor's restart intensity (and a restart would not free anything).
                log.warning("debug_accept_failed", error=str(exc), retry_in=_ACCEPT_BACKOFF)
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            self._connections_total += 1
            if self._clients >= self.max_clients:
                self._refused_busy += 1
                self.nursery.start_soon(self._refuse, stream)
            else:
                self._clients += 1
                self.nursery.start_soon(self._serve_client, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        async with stream:
            msg = f"too many debug clients (at most {self.max_clients}); try again later"
            await self._send(stream, error_response(ErrorCode.BUSY, msg), count_drop=False)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-read
        except Exception:
            # One connection's bug must not take the channel (or the actor) down: log it, close it.
            log.exception("debug_client_failed")
        finally:
            self._clients -= 1

    async def _send(self, stream: trio.SocketStream, obj: Any, *, count_drop: bool = True) -> bool:
        """Write one line within `send_timeout`. False: the client is gone or not reading; close it."""
        data = encode_line(obj)
        with trio.move_on_after(self.send_timeout):
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        if count_drop:
            self._dropped_slow += 1
        log.info("debug_client_too_slow", timeout=self.send_timeout)
        return False

    async def _converse(self, stream: trio.SocketStream) -> None:
        reader = LineReader(stream, self.max_line)
        while True:
            with trio.move_on_after(self.idle_timeout) as idle:
                line = await reader.next()
            if idle.cancelled_caught:
                msg = f"no request for {self.idle_timeout:g}s; closing"
                await self._send(stream, error_response(ErrorCode.IDLE, msg), count_drop=False)
                return
            if line is None:
                return
            if not isinstance(line, LineTooLong) and not line.strip():
                continue  # blank lines are harmless (handy with `socat` or `nc`)
            outcome = self._respond(line)
            if isinstance(outcome, _Subscribe):
                await self._subscribe(stream, reader, outcome.kinds)
                return
            if not await self._send(stream, outcome):
                return

    def _respond(self, line: bytes | LineTooLong) -> dict[str, Any] | _Subscribe:
        """The answer to one request line, or, for a valid `subscribe`, the switch to streaming."""
        if isinstance(line, LineTooLong):
            return error_response(ErrorCode.LINE_TOO_LONG, f"request lines are limited to {line.limit} bytes")
        self._requests_total += 1
        try:
            request = parse_request(line)
        except BadRequest as exc:
            return error_response(exc.code, str(exc), exc.op)
        if request.op != "subscribe":
            return self._answer(request)
        try:
            # The bus matches a kind exactly or by its first segment: "key", "key." and "key.*" all mean "key.…".
            kinds = [k.removesuffix("*").removesuffix(".") or k for k in strs_arg(request, "events")]
        except BadArgument as exc:
            return error_response(ErrorCode.BAD_ARGUMENT, str(exc), "subscribe")
        unknown = unknown_kinds(kinds)
        if unknown:
            known = ", ".join(sorted(KINDS))
            return error_response(ErrorCode.BAD_ARGUMENT, f"unknown event kinds {unknown}; known: {known}", "subscribe")
        return _Subscribe(kinds)

    def _answer(self, request: Request) -> dict[str, Any]:
        handler = self._handlers().get(request.op)
        if handler is None:
            known = ", ".join(OPS)
            return error_response(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}; known ops: {known}", request.op)
        try:
            return ok_response(request.op, handler(request))
        except BadArgument as exc:
            return error_response(ErrorCode.BAD_ARGUMENT, str(exc), request.op)
        except _NotFound as exc:
            return error_response(ErrorCode.NOT_FOUND, str(exc), request.op)
        except Exception as exc:
            # The router raised while answering: report it and keep serving.
            log.exception("debug_op_failed", op=request.op)
            return error_response(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", request.op)

    # -- ops ------------------------------------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[Request], Any]]:
        return {
            "ping": self._op_ping,
            "help": lambda _req: {"ops": OPS},
            "tree": self._op_tree,
            "actor": self._op_actor,
            "keys": lambda _req: to_jsonable(self.router.keys()),
            "key": self._op_key,
            "transitions": self._op_transitions,
            "decisions": self._op_decisions,
            "policies": self._op_policies,
        }

    def _op_ping(self, _req: Request) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "server": to_jsonable(self.server_status())}

    def _op_tree(self, req: Request) -> dict[str, Any]:
        with_state = req.args.get("state", False)
        if not isinstance(with_state, bool):
            raise BadArgument('"state" must be true or false')
        return node_to_json(self.router.tree(), with_state=with_state)

    def _op_actor(self, req: Request) -> dict[str, Any]:
        ident = str_arg(req, "id")
        found = find_node(self.router.tree(), ident)
        if found is None:
            raise _NotFound(f"no actor named {ident!r} in the tree")
        node, trail = found
        return {**tree_to_json(node), "path": trail, "state": to_jsonable(node.state)}

    def _known_key(self, key_id: str) -> dict[str, Any]:
        entry = self.router.key(key_id)
        if entry is None:
            raise _NotFound(f"no key with id {key_id!r}")
        return entry

    def _op_key(self, req: Request) -> Any:
        return to_jsonable(self._known_key(str_arg(req, "id")))

    def _op_transitions(self, req: Request) -> Any:
        key_id = str_arg(req, "key")
        limit = int_arg(req, "limit", default=50)
        self._known_key(key_id)
        try:
            return to_jsonable(self.router.transitions(key_id, limit))
        except UnknownKey as exc:
            raise _NotFound(str(exc)) from None

    def _op_decisions(self, req: Request) -> Any:
        return to_jsonable(self.router.decisions(int_arg(req, "limit", default=20)))

    def _op_policies(self, _req: Request) -> Any:
        # A router without policies (an embedding's own RouterAPI) answers with empty lists.
        policies = getattr(self.router, "policies", None)
        audit = getattr(self.router, "policy_audit", None)
        budgets = getattr(self.router, "budgets", None)
        return to_jsonable(
            {
                "policies": policies() if callable(policies) else [],
                "audit": audit(20) if callable(audit) else [],
                "budgets": budgets() if callable(budgets) else {},
            }
        )

    async def _subscribe(self, stream: trio.SocketStream, reader: LineReader, kinds: list[str]) -> None:
        sub = self.router.events.subscribe(kinds or None, capacity=self.subscriber_queue)
        wall_offset = self.router.events.wall_offset
        self._subscribers += 1
        try:
            ack = {"events": kinds or None, "queue": self.subscriber_queue}
            if not await self._send(stream, ok_response("subscribe", ack)):
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_client_leaves, reader, nursery.cancel_scope)
                try:
                    async for event in sub:
                        if not await self._send(stream, ok_response("event", event_json(event, wall_offset))):
                            break
                except SubscriberLagged as exc:
                    self._dropped_slow += 1
                    log.info("debug_subscriber_lagged", capacity=exc.capacity)
                    # Best effort: a client that lagged may not read this either.
                    with trio.move_on_after(min(self.send_timeout, 1.0)):
                        await self._send(stream, error_response(ErrorCode.LAGGED, str(exc), "subscribe"))
                nursery.cancel_scope.cancel(reason="subscription ended")
        finally:
            sub.close()
            self._subscribers -= 1

    async def _until_client_leaves(self, reader: LineReader, scope: trio.CancelScope) -> None:
        """After `subscribe` the connection only carries events; input is read (and ignored) to see EOF."""
        try:
            while await reader.next() is not None:
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel(reason="debug subscriber left")


class _NotFound(Exception):
    pass


@attrs.frozen
class _Subscribe:
    kinds: list[str]


@contextlib.asynccontextmanager
async def open_debug_channel(
    router: RouterAPI, path: str | os.PathLike[str] | None = None, **options: Any
) -> AsyncIterator[DebugServer]:
    """Serve the debug channel for `router` at `path` (default: `default_socket_path()`) while the block runs.

    The socket is bound before this yields (a live socket at `path` raises `DebugSocketInUse` here) and
    removed when the block exits. `options` are `DebugServer`'s keyword arguments.
    """
    server = DebugServer(router, path, **options)
    server.bind()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            try:
                yield server
            finally:
                server.stop()
    finally:
        server.close_socket()
