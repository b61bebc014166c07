"""Start the simulator in a test's nursery on 127.0.0.1 (real sockets, real clock, short windows)."""

from __future__ import annotations

from typing import Any

import trio

from apikeyrouter.sim import SimServer, parse_sim_config


async def start_sim(nursery: trio.Nursery, config: dict[str, Any] | None = None) -> tuple[SimServer, str]:
    server = SimServer(parse_sim_config(config or {}))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}"
