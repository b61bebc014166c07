"""The floor for `benchmarks/proxy.py`: the least a forwarding HTTP/1.1 proxy on this stack can cost.

    python benchmarks/floor.py --upstream http://127.0.0.1:PORT

A trio + h11 server with keep-alive, a LIFO pool of keep-alive h11 client connections to the upstream, and
orjson for the request body in, the upstream body and the answer out. No routing, auth, metrics, logging,
deadlines or error handling beyond closing a connection: whatever `serve` costs above this is ours.
Prints `floor listening on http://127.0.0.1:PORT` once it serves.
"""

from __future__ import annotations

import argparse
import contextlib
from functools import partial
from urllib.parse import urlsplit

import h11
import orjson
import trio

RECEIVE = 65536


class Upstream:
    """Keep-alive client connections to one origin, most recently used first."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[trio.SocketStream, h11.Connection]] = []
        self.host_header = f"{host}:{port}".encode()

    async def call(self, target: bytes, authorization: bytes, body: bytes) -> tuple[int, bytes]:
        if self.idle:
            stream, conn = self.idle.pop()
        else:
            stream = await trio.open_tcp_stream(self.host, self.port)
            conn = h11.Connection(h11.CLIENT)
        headers = [
            (b"host", self.host_header),
            (b"authorization", authorization),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        out = conn.send(h11.Request(method=b"POST", target=target, headers=headers))
        assert out is not None
        await stream.send_all(out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, parts = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE))
            elif type(event) is h11.Response:
                status = event.status_code
            elif type(event) is h11.Data:
                parts.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                break
            else:
                raise RuntimeError(f"upstream sent {event!r}")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle.append((stream, conn))
        else:
            await stream.aclose()
        return status, b"".join(parts)


async def serve(upstream: Upstream, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    with contextlib.suppress(trio.BrokenResourceError, h11.ProtocolError):
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE))
                    continue
                if type(event) is not h11.Request:
                    return
                request, parts = event, []
                while type(event := conn.next_event()) is not h11.EndOfMessage:
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(RECEIVE))
                    elif type(event) is h11.Data:
                        parts.append(bytes(event.data))
                    else:
                        return
                payload = orjson.loads(b"".join(parts))
                auth = next((v for k, v in request.headers if k == b"authorization"), b"")
                status, raw = await upstream.call(request.target, auth, orjson.dumps(payload))
                answer = orjson.dumps(orjson.loads(raw))
                head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
                out = conn.send(h11.Response(status_code=status, headers=head))
                assert out is not None
                await stream.send_all(out + conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()


async def main(upstream_url: str) -> None:
    where = urlsplit(upstream_url)
    upstream = Upstream(where.hostname or "127.0.0.1", where.port or 80)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(serve, upstream), 0, host="127.0.0.1"))
        print(f"floor listening on http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, parser.parse_args().upstream)
