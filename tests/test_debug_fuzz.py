"""Malformed input, fuzzed: the server always answers with a JSON object line and never falls over."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apikeyrouter.debug.server import OPS
from tests.debug_fake import ThreadedFake, threaded_fake


@pytest.fixture(scope="module")
def served() -> Iterator[ThreadedFake]:
    with threaded_fake(max_line=4096) as s:
        yield s


def exchange(path: str, payload: bytes) -> list[dict[str, Any]]:
    """Send `payload`, a newline, then a ping; return every answer line up to the ping's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload + b"\n" + b'{"op": "ping"}\n')
        answers: list[dict[str, Any]] = []
        with sock.makefile("rb") as f:
            while True:
                line = f.readline()
                assert line.endswith(b"\n"), "the server closed the connection"
                answer = json.loads(line)
                answers.append(answer)
                if answer.get("op") == "ping" and answer.get("ok"):
                    return answers


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ops = st.sampled_from([op for op in OPS if op != "subscribe"]) | st.text(max_size=12)
requests = st.fixed_dictionaries(
    {"op": ops},
    optional={"id": json_values, "key": json_values, "limit": json_values, "state": json_values, "x": json_values},
).map(lambda d: json.dumps(d).encode())
payloads = st.one_of(
    st.binary(max_size=300).filter(lambda b: b"subscribe" not in b),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests,
    st.integers(4000, 9000).map(lambda n: b"x" * n),  # over the 4 KiB line limit
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_any_input_gets_well_formed_answers(served: ThreadedFake, payload: bytes) -> None:
    for answer in exchange(served.path, payload):
        assert isinstance(answer["ok"], bool)
        if answer["ok"]:
            assert "data" in answer and isinstance(answer["op"], str)
        else:
            assert set(answer["error"]) == {"code", "message"}
            assert answer["error"]["code"] in {
                "bad_encoding",
                "bad_json",
                "bad_request",
                "line_too_long",
                "unknown_op",
                "bad_argument",
                "not_found",
            }


def test_the_server_is_still_up_after_the_fuzzing(served: ThreadedFake) -> None:
    assert exchange(served.path, b"")[-1]["data"]["pong"] is True
    assert served.fake is not None and served.fake.debug is not None
    assert served.run_sync(lambda: served.fake.debug.status) == "running"  # type: ignore[union-attr]
