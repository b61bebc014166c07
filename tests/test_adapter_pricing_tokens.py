"""Prices (Decimal, per 1M tokens, prefix-matched snapshots) and offline token counts."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest

from apikeyrouter.adapters import OpenAIAdapter, PriceTable, count_chat, count_text, encoding_for_model
from apikeyrouter.adapters import tokens as tokens_mod
from apikeyrouter.domain.request import ChatMessage, RequestIntent, Usage


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("gpt-4o-audio-preview", None),  # a different variant is not priced as its base
        ("claude-opus-4-9", None),
        ("llama-3", None),
    ],
)
def test_price_matching(model: str, entry: str | None) -> None:
    assert PriceTable().match(model) == entry


def test_costs_are_exact_decimals() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o-mini", Usage(1_000_000, 1_000_000)) == Decimal("0.75")
    assert table.cost("claude-sonnet-4-5", Usage(1000, 500)) == Decimal("0.0105")
    unknown = table.priced("mystery-model", 10, 10)
    assert unknown.amount == 0 and not unknown.known


def test_overrides() -> None:
    table = PriceTable({"gpt-4o": ("1", "2"), "in-house-7b": ("0.01", "0.02")})
    assert table.cost("gpt-4o-2024-11-20", Usage(1_000_000, 0)) == Decimal(1)
    assert table.priced("in-house-7b", 1_000_000, 1_000_000).amount == Decimal("0.03")


def test_encodings_by_model() -> None:
    assert encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_for_model("o4-mini") == "o200k_base"
    assert encoding_for_model("gpt-4.1") == "o200k_base"
    assert encoding_for_model("gpt-4-0613") == "cl100k_base"
    assert encoding_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert encoding_for_model("claude-sonnet-4") is None


def test_token_ids_are_the_real_ones_and_no_network_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(tokens_mod, "_cache", {})  # force a fresh load under the guard
    # Known ids of both encodings for "hello world" (the values tiktoken's own docs show).
    assert tokens_mod.get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert tokens_mod.get_encoding("o200k_base").encode_ordinary("hello world") == [24912, 2375]
    assert count_text("tiktoken is great!", "cl100k_base") == 6


def test_chat_formula() -> None:
    msgs = (ChatMessage("system", "You are terse."), ChatMessage("user", "hello world"))
    # 3 reply priming + per message (3 + role + content): system=1, "You are terse."=4, user=1, "hello world"=2
    exact = count_chat(msgs, "gpt-4o")
    assert exact.exact and exact.tokens == 3 + (3 + 1 + 4) + (3 + 1 + 2)
    estimate = count_chat(msgs, "claude-sonnet-4")
    assert not estimate.exact and estimate.tokens >= exact.tokens


def test_estimate_bounds_output_by_max_tokens() -> None:
    adapter = OpenAIAdapter()
    intent = RequestIntent(model="gpt-4o-mini", messages=(ChatMessage("user", "hello world"),), max_tokens=100)
    est = adapter.estimate(intent)
    assert est.max_output_tokens == 100 and est.price_known and est.exact_tokens
    assert est.worst_case_cost == (Decimal(est.input_tokens) * Decimal("0.15") + 100 * Decimal("0.60")) / 1_000_000
    unknown = adapter.estimate(RequestIntent(model="my-model", messages=intent.messages))
    assert unknown.worst_case_cost == 0 and not unknown.price_known and unknown.max_output_tokens == 4096
