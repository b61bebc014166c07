"""The debug channel against a running fake router: ops, errors, subscriptions, slow clients, the socket.

Unix sockets need real I/O, so these tests use the real clock and short timeouts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.lowlevel

from apikeyrouter.debug import (
    DebugChannelError,
    DebugChannelUnavailable,
    DebugRequestError,
    DebugServer,
    DebugSocketInUse,
    call,
    connect,
    open_debug_channel,
    request,
    subscribe,
)
from apikeyrouter.debug.protocol import LineReader, to_jsonable
from apikeyrouter.observe import SupervisorEscalated, render_wall
from apikeyrouter.runtime.views import tree_to_json
from tests.debug_fake import (
    LEAKY_SECRET,
    THROTTLE_WALL,
    FakeRouter,
    breaker_half_opened,
    eventually,
    exists,
    provider_degraded,
    running_fake,
    short_socket_dir,
    transition,
)
from tests.kernel_actors import CrashNow


@pytest.fixture
def path() -> Iterator[str]:
    directory = short_socket_dir()
    yield os.path.join(directory, "debug.sock")
    shutil.rmtree(directory, ignore_errors=True)


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


class RawClient:
    """A client that speaks bytes, to send what a well-behaved client never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = LineReader(stream, 1 << 24)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> dict[str, Any] | None:
        with trio.fail_after(5):
            raw = await self.reader.next()
        assert not hasattr(raw, "limit")
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    async def ask(self, data: bytes) -> dict[str, Any]:
        await self.send(data + b"\n")
        answer = await self.line()
        assert answer is not None
        return answer


async def raw(path: str) -> RawClient:
    return RawClient(await trio.open_unix_socket(path))


@pytest.fixture
async def served(path: str) -> AsyncIterator[FakeRouter]:
    async with running_fake(path, send_timeout=0.5) as fake:
        yield fake


# -- ops match the source ---------------------------------------------------------------------------


async def test_tree_keys_key_transitions_and_decisions_match_the_router(path: str, served: FakeRouter) -> None:
    tree = await call(path, "tree")
    expected = tree_to_json(served.tree())
    # The debug server's own counters move while we ask; everything else is identical.
    assert tree == expected
    assert [c["name"] for c in tree["children"]] == ["providers", "router", "debug"]
    assert tree["children"][2]["kind"] == "debug"

    keys = await call(path, "keys")
    assert [k["id"] for k in keys] == ["openai-1", "openai-2", "anthropic-1"]
    assert keys == to_jsonable(served.keys())
    assert keys[1]["lifecycle"] == "throttled"
    assert keys[1]["lifecycle_until_wall"] == THROTTLE_WALL

    assert await call(path, "key", id="openai-1") == to_jsonable(served.key("openai-1"))
    assert await call(path, "transitions", key="openai-2", limit=5) == served.transitions("openai-2")
    assert await call(path, "transitions", key="openai-1") == []
    decisions = await call(path, "decisions", limit=1)
    assert [d["id"] for d in decisions] == ["d-2"]
    assert [d["id"] for d in await call(path, "decisions")] == ["d-1", "d-2"]


async def test_key_material_never_leaves_the_channel(path: str, served: FakeRouter) -> None:
    answer = await request(path, {"op": "key", "id": "openai-2"})
    text = json.dumps(answer)
    assert LEAKY_SECRET not in text
    assert "invalid key [redacted]" in answer["data"]["lifecycle_reason"]
    assert answer["data"]["fingerprint"] == "fp:abcdefabcd"  # fingerprints are not secrets


async def test_actor_by_name_and_by_path(path: str, served: FakeRouter) -> None:
    actor = await call(path, "actor", id="key:openai-2")
    assert actor["path"] == ["root", "providers", "key:openai-2"]
    assert actor["kind"] == "counter"
    assert actor["mailbox"] == {"depth": 0, "capacity": 8}
    assert actor["state"] == {"total": 0}  # an attrs instance, as a dict
    by_path = await call(path, "actor", id="root/providers/key:openai-2")
    assert by_path["path"] == actor["path"]
    debug = await call(path, "actor", id="debug")
    assert debug["state"]["path"] == path
    assert debug["state"]["max_clients"] == 32
    with pytest.raises(DebugRequestError) as err:
        await call(path, "actor", id="nobody")
    assert err.value.code == "not_found"


async def test_a_supervisor_restart_shows_its_count_and_reason(path: str, served: FakeRouter) -> None:
    await served.key_actor("openai-1").tell(CrashNow())
    await eventually(lambda: served.key_actor("openai-1").snapshot().restarts == 1)
    tree = await call(path, "tree")
    node = tree["children"][0]["children"][0]
    assert node["name"] == "key:openai-1"
    assert node["restarts"] == 1
    assert node["status"] == "running"
    assert node["last_crash"] == "RuntimeError: crash"
    actor = await call(path, "actor", id="key:openai-1")
    assert (actor["restarts"], actor["last_crash"]) == (1, "RuntimeError: crash")


async def test_ping_and_help(path: str, served: FakeRouter) -> None:
    ping = await request(path, {"op": "ping"})
    assert ping["ok"] is True and ping["op"] == "ping"
    assert ping["data"]["pong"] is True and ping["data"]["pid"] == os.getpid()
    assert isinstance(ping["now"], float) and ping["now_wall"].endswith("Z")
    ops = (await call(path, "help"))["ops"]
    assert set(ops) == {
        "ping", "help", "tree", "actor", "keys", "key", "transitions", "decisions", "policies", "subscribe",
    }  # fmt: skip


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", "bad_json"),
        (b"\xff\xfe{}", "bad_encoding"),
        (b"[1, 2]", "bad_request"),
        (b'"tree"', "bad_request"),
        (b"{}", "bad_request"),
        (b'{"op": 7}', "bad_request"),
        (b'{"op": "reboot"}', "unknown_op"),
        (b'{"op": "actor"}', "bad_argument"),
        (b'{"op": "actor", "id": ["x"]}', "bad_argument"),
        (b'{"op": "transitions", "key": "openai-1", "limit": "5"}', "bad_argument"),
        (b'{"op": "transitions", "key": "openai-1", "limit": -1}', "bad_argument"),
        (b'{"op": "decisions", "limit": 1.5}', "bad_argument"),
        (b'{"op": "tree", "state": "yes"}', "bad_argument"),
        (b'{"op": "key", "id": "nope"}', "not_found"),
        (b'{"op": "transitions", "key": "nope"}', "not_found"),
        (b"[" * 100_000, "line_too_long"),
        (b"[" * 60_000, "bad_json"),  # nested too deeply for the parser: still an answer
        (b'{"op": "subscribe", "events": 3}', "bad_argument"),
    ],
)
async def test_bad_lines_get_an_error_and_the_connection_stays_usable(
    path: str, served: FakeRouter, line: bytes, code: str
) -> None:
    client = await raw(path)
    answer = await client.ask(line)
    assert answer["ok"] is False
    assert answer["error"]["code"] == code
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    assert (await client.ask(b'{"op": "ping"}'))["ok"] is True


async def test_several_requests_on_one_connection_blank_lines_and_crlf(path: str, served: FakeRouter) -> None:
    client = await raw(path)
    await client.send(b'\n  \n{"op": "ping"}\r\n{"op": "keys"}\n')
    first, second = await client.line(), await client.line()
    assert first is not None and first["op"] == "ping"
    assert second is not None and second["op"] == "keys"


async def test_a_router_error_is_an_internal_error_not_a_crash(path: str, served: FakeRouter) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError(f"snapshot store gone ({LEAKY_SECRET})")

    served.keys = broken  # type: ignore[method-assign]
    answer = await request(path, {"op": "keys"})
    assert answer["error"]["code"] == "internal"
    assert "RuntimeError: snapshot store gone" in answer["error"]["message"]
    assert LEAKY_SECRET not in answer["error"]["message"]
    assert (await request(path, {"op": "ping"}))["ok"] is True


async def test_connections_beyond_the_limit_are_told_busy(path: str) -> None:
    async with running_fake(path, max_clients=2) as fake:
        first, second = await raw(path), await raw(path)
        for client in (first, second):
            assert (await client.ask(b'{"op":"ping"}'))["ok"]
        third = await raw(path)
        answer = await third.line()
        assert answer is not None and answer["error"]["code"] == "busy"
        assert await third.line() is None  # closed
        await first.stream.aclose()
        await eventually(lambda: fake.debug is not None and fake.debug.server_status().clients <= 1)
        assert (await request(path, {"op": "ping"}))["ok"]


async def test_an_idle_client_is_told_and_closed(path: str) -> None:
    async with running_fake(path, idle_timeout=0.2):
        client = await raw(path)
        answer = await client.line()
        assert answer is not None and answer["error"]["code"] == "idle"
        assert await client.line() is None


# -- subscriptions ----------------------------------------------------------------------------------


async def test_subscribe_receives_events_as_they_are_published(path: str, served: FakeRouter) -> None:
    received: list[dict[str, Any]] = []

    async def follow(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stream = subscribe(path, ["key"])
        task_status.started()
        async for event in stream:
            received.append(event)
            if len(received) == 2:
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(follow)
        await eventually(lambda: served.events.subscriber_count > 0)
        served.events.publish(provider_degraded("openai"))  # filtered out
        served.events.publish(transition("openai-1", "active", "throttled"))
        served.events.publish(transition("openai-1", "throttled", "active"))
    assert [(e["kind"], e["to"]) for e in received] == [("key.transition", "throttled"), ("key.transition", "active")]
    assert received[0]["at_wall"] == render_wall(received[0]["at"], served.events.wall_offset)
    await eventually(lambda: served.events.subscriber_count == 0)


async def test_subscribe_acknowledges_and_filters_by_prefix_forms(path: str, served: FakeRouter) -> None:
    client = await raw(path)
    ack = await client.ask(b'{"op": "subscribe", "events": ["key.*", "provider.health"]}')
    assert ack["ok"] and ack["op"] == "subscribe"
    assert ack["data"] == {"events": ["key", "provider.health"], "queue": 256}
    served.events.publish(SupervisorEscalated("root", "router", 10, trio.current_time()))
    served.events.publish(provider_degraded("openai"))
    served.events.publish(breaker_half_opened("openai-1"))
    kinds = [(await client.line() or {})["data"]["kind"] for _ in range(2)]
    assert kinds == ["provider.health", "key.breaker"]


async def test_subscribing_to_an_unknown_kind_is_refused_with_the_known_kinds(path: str, served: FakeRouter) -> None:
    client = await raw(path)
    answer = await client.ask(b'{"op": "subscribe", "events": ["key.transitions"]}')
    assert answer["ok"] is False and answer["error"]["code"] == "bad_argument"
    assert "key.transitions" in answer["error"]["message"] and "key.transition," in answer["error"]["message"]
    assert served.events.subscriber_count == 0


async def test_a_subscriber_that_falls_behind_is_told_and_dropped(path: str) -> None:
    async with running_fake(path, subscriber_queue=8) as fake:
        client = await raw(path)
        assert (await client.ask(b'{"op": "subscribe"}'))["ok"]
        for i in range(100):  # no checkpoint: the server cannot drain the queue in between
            fake.events.publish(transition(f"key-{i}", "active", "throttled"))
        lines = []
        while (line := await client.line()) is not None:
            lines.append(line)
        # The queue's 8, plus possibly one handed straight to the server's waiting receive.
        got = [ln["data"]["key"] for ln in lines[:-1]]
        assert got in ([f"key-{i}" for i in range(8)], [f"key-{i}" for i in range(9)])
        assert lines[-1]["ok"] is False and lines[-1]["error"]["code"] == "lagged"
        assert fake.events.subscriber_count == 0
        assert fake.debug is not None and fake.debug.server_status().dropped_slow == 1


async def _publish(fake: FakeRouter, n: int) -> None:
    """Publish `n` events with a checkpoint after each, as when many tasks publish: the server runs in between."""
    for i in range(n):
        fake.events.publish(transition("openai-1", "active", "throttled", reason=f"{i} " + "x" * 200))
        await trio.lowlevel.checkpoint()


async def test_a_stuck_subscriber_does_not_slow_publishing(path: str) -> None:
    # A queue big enough never to lag: here it is the write deadline that must drop the stuck client.
    async with running_fake(path, send_timeout=0.3, subscriber_queue=50_000) as fake:
        await _publish(fake, 10_000)

        stuck = await trio.open_unix_socket(path)
        await stuck.send_all(b'{"op": "subscribe"}\n')  # and never read again
        await eventually(lambda: fake.events.subscriber_count > 0)
        with trio.fail_after(10):  # all 10,000 publishes complete while the client is stuck
            await _publish(fake, 10_000)
        # The socket buffer filled long before the end (10,000 events are megabytes), yet every publish
        # went through: `publish` is a plain call that never waits for a subscriber. (How fast it stays
        # is a benchmark's question, not a test's: benchmarks/debug_subscriber.py.)
        assert fake.events.published == 20_000

        await eventually(
            lambda: not (fake.events.subscriber_count or (fake.debug and fake.debug.server_status().subscribers))
        )
        assert fake.debug is not None and fake.debug.server_status().dropped_slow == 1
        # What it finds when it finally reads: event lines, then the end of the stream. (The write that
        # hit the deadline may have been cut mid-line: the last line can be partial.)
        reader = LineReader(stuck, 1 << 20)
        lines: list[bytes] = []
        with trio.fail_after(5):
            while (line := await reader.next()) is not None:
                assert isinstance(line, bytes)
                lines.append(line)
        assert 1 < len(lines) < 10_000
        assert all(json.loads(ln)["op"] in ("subscribe", "event") for ln in lines[:-1])


# -- the socket -------------------------------------------------------------------------------------


async def test_socket_is_owner_only_and_removed_on_stop(path: str) -> None:
    async with running_fake(path) as fake:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert os.listdir(os.path.dirname(path)) == ["debug.sock"]  # the private bind directory is gone
        assert fake.debug is not None
        await fake.root.remove_child("debug")
        assert not exists(path)


async def test_a_stale_socket_is_replaced(path: str) -> None:
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # the file stays; nobody listens
    assert exists(path)
    async with running_fake(path):
        assert (await call(path, "ping"))["pong"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not exists(path)


async def test_a_live_socket_is_refused(path: str, served: FakeRouter) -> None:
    with pytest.raises(DebugSocketInUse) as err:
        DebugServer(served, path).bind()  # type: ignore[arg-type]
    assert err.value.path == path
    with pytest.raises(DebugSocketInUse):
        async with open_debug_channel(served, path):  # type: ignore[arg-type]
            pass
    assert (await call(path, "ping"))["pong"]  # the live one is untouched


async def test_a_file_that_is_not_a_socket_is_not_replaced(path: str) -> None:
    write_file(path, "precious")
    fake = FakeRouter()
    with pytest.raises(DebugChannelError, match="not a socket"):
        DebugServer(fake, path).bind()  # type: ignore[arg-type]
    assert read_file(path) == "precious"


async def test_open_debug_channel_serves_while_the_block_runs(path: str) -> None:
    fake = FakeRouter()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.root.run)
        async with open_debug_channel(fake, path, name="debug-embedded") as server:  # type: ignore[arg-type]
            assert exists(path)
            assert (await call(path, "ping"))["server"]["path"] == path
            assert server.status == "running"
        assert not exists(path)
        assert server.status == "stopped"
        nursery.cancel_scope.cancel()


# -- the client's errors ----------------------------------------------------------------------------


async def test_client_errors_say_what_is_wrong(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DebugChannelUnavailable) as err:
        await request(path, {"op": "ping"})
    assert err.value.reason == "missing"
    assert "is an apikeyrouter process running?" in str(err.value)

    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()
    with pytest.raises(DebugChannelUnavailable) as err:
        await call(path, "ping")
    assert err.value.reason == "refused"

    async def forbidden(_path: str) -> trio.SocketStream:
        raise PermissionError(13, "Permission denied")

    # Tests may run as root, which no file mode stops: simulate what a non-owner gets.
    monkeypatch.setattr(trio, "open_unix_socket", forbidden)
    with pytest.raises(DebugChannelUnavailable) as err:
        await connect(path)
    assert err.value.reason == "forbidden"
    assert "owner-only" in str(err.value)


async def test_running_out_of_file_descriptors_is_waited_out_not_a_crash(
    path: str, served: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = [OSError(errno.EMFILE, "Too many open files")] * 2
    real_accept = trio.SocketListener.accept

    async def flaky_accept(self: trio.SocketListener) -> trio.SocketStream:
        if failures:
            raise failures.pop()
        return await real_accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", flaky_accept)
    # The accept loop is already waiting in the real accept: the next two calls fail.
    assert (await call(path, "ping"))["pong"]
    assert (await call(path, "ping"))["pong"]
    assert not failures
    assert served.debug is not None and served.debug.status == "running" and served.debug.restarts == 0
