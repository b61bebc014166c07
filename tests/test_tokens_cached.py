"""Counting a request's tokens twice, or texts that recur across requests, gives the very count of a first
reading: the budget hold's upper bound does not depend on what was counted before."""

from __future__ import annotations

import attrs

from apikeyrouter.adapters import OpenAIAdapter, count_chat, count_text
from apikeyrouter.adapters.anthropic import AnthropicAdapter
from apikeyrouter.adapters.tokens import ESTIMATE_FACTOR, REPLY_PRIMING, TOKENS_PER_MESSAGE
from apikeyrouter.domain.request import ChatMessage, RequestIntent

SYSTEM = "You are a careful assistant. Answer in one short sentence. " * 20


def by_hand(messages: list[ChatMessage], encoding: str) -> int:
    return REPLY_PRIMING + sum(
        TOKENS_PER_MESSAGE + count_text(m.role, encoding) + count_text(m.content, encoding) for m in messages
    )


def test_a_conversation_counted_turn_after_turn_counts_as_if_read_fresh() -> None:
    history = [ChatMessage("system", SYSTEM)]
    for turn in range(600):  # more distinct texts than are kept: the counts stay right when the memo clears
        history.append(ChatMessage("user", f"question number {turn}: what is {turn} squared?"))
        assert count_chat(history[-3:], "gpt-4o").tokens == by_hand(history[-3:], "o200k_base")
        history.append(ChatMessage("assistant", f"{turn * turn}."))


def test_a_text_too_long_to_keep_is_counted_each_time() -> None:
    long = "lorem ipsum dolor sit amet " * 2000
    messages = [ChatMessage("user", long)]
    first = count_chat(messages, "gpt-4o").tokens
    assert first == by_hand(messages, "o200k_base") == count_chat(messages, "gpt-4o").tokens


def test_an_estimated_count_is_scaled_after_the_memo_as_before() -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "hi")]
    expected = -(-by_hand(messages, "cl100k_base") * 12 // 10)  # ceil(total * 1.2)
    assert ESTIMATE_FACTOR == 1.2
    assert count_chat(messages, "claude-3-5-haiku-20241022").tokens == expected
    assert count_chat(messages, "claude-3-5-haiku-20241022").tokens == expected


def test_an_adapter_estimates_each_intent_for_itself() -> None:
    adapter = OpenAIAdapter()
    short = RequestIntent(model="gpt-4o", messages=(ChatMessage("user", "hi"),), max_tokens=10)
    longer = attrs.evolve(short, messages=(ChatMessage("user", "hi " * 50),))
    same_again = attrs.evolve(short)  # equal but not the same object: estimated afresh, to the same figure
    a, b, c = adapter.estimate(short), adapter.estimate(longer), adapter.estimate(same_again)
    assert a.input_tokens < b.input_tokens
    assert a == c
    assert adapter.estimate(short) == a
    bigger = attrs.evolve(short, max_tokens=1000)
    assert adapter.estimate(bigger).worst_case_cost > a.worst_case_cost
    claude = attrs.evolve(short, model="claude-3-5-haiku-20241022")
    assert adapter.estimate(claude).exact_tokens is False  # another model: its own tokenizer, an estimate
    assert AnthropicAdapter().estimate(claude).input_tokens == adapter.estimate(claude).input_tokens
