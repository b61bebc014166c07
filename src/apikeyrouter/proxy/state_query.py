"""`GET /state/query?trail=...&key=...&since=...`: the store's history (admin). The parameters and the
row fields are runtime/history.py's; this module reads them from the query string."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from apikeyrouter.errors import InvalidRequest
from apikeyrouter.runtime.api import RouterAPI
from apikeyrouter.runtime.history import parse_state_query, rows_json

__all__ = ["state_query"]

MAX_QUERY_BYTES = 4096


async def state_query(router: RouterAPI, query_string: bytes) -> tuple[int, Any]:
    if len(query_string) > MAX_QUERY_BYTES:
        raise InvalidRequest(f"the query string is longer than {MAX_QUERY_BYTES} bytes", param="query")
    try:
        pairs = parse_qsl(query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidRequest("the query string is not UTF-8", param="query") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidRequest(f"parameter {name!r} is given more than once", param=name)
        params[name] = value
    wall_offset = router.events.wall_offset
    query = parse_state_query(params, wall_offset)
    rows = await router.query_state(query)
    return 200, {"object": "list", "trail": query.trail, "data": rows_json(rows, wall_offset)}
