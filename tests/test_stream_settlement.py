"""What a routed stream bills, on virtual time: the reported usage; the held worst case when the provider
never reports any; what was used when the caller leaves early (and the upstream is closed then)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import trio
import trio.testing

from apikeyrouter import Usage
from apikeyrouter.domain.request import RequestIntent
from tests.routing_env import chat
from tests.sim_transport import SimAdapter, sim_env

BUDGET = {"budgets": {"global": {"limit": "100", "period": "day"}}}


class NoUsageAdapter(SimAdapter):
    """An OpenAI-compatible provider that ignores `stream_options.include_usage`: no usage in the stream."""

    def body(self, intent: RequestIntent, *, stream: bool) -> dict[str, Any]:
        body = super().body(intent, stream=stream)
        body.pop("stream_options", None)
        return body


async def test_a_stream_that_never_reports_usage_is_billed_the_worst_case_it_held(autojump_clock: object) -> None:
    # It used to be billed 0 (or the output deltas counted, far below what the budget held).
    request = chat("no usage from this one", max_tokens=200)
    async with sim_env([], config=BUDGET) as env:
        adapter = NoUsageAdapter(env.transport, provider="compat")
        await env.router.register_provider("compat", adapter)
        await env.router.register_key("sk-sim-c", "compat", key_id="c")
        async with env.router.stream(request) as handle:
            text = "".join([chunk.delta async for chunk in handle])
        assert text
        worst = adapter.estimate(RequestIntent.from_openai(request))
        assert worst.worst_case_cost > 0
        assert handle.final_metadata is not None and handle.final_metadata.cost == worst.worst_case_cost
        await trio.testing.wait_all_tasks_blocked()
        assert Decimal(env.router.budgets()["global"]["spent"]) == worst.worst_case_cost
        assert Decimal(env.router.budgets()["global"]["reserved"]) == 0
        key = env.router.key("c")
        assert key is not None and key["in_flight"] == 0
        assert key["usage"]["tpm"] == worst.input_tokens + worst.max_output_tokens


async def test_leaving_a_stream_early_settles_what_was_used_and_closes_the_upstream(autojump_clock: object) -> None:
    request = chat("a long answer", max_tokens=200)
    sim = {"chunk_delay_ms": 100}
    async with sim_env([("k", "sk-sim-k", {})], sim_defaults=sim, config=BUDGET) as env:
        start = trio.current_time()
        async with env.router.stream(request) as handle:
            seen = 0
            async for chunk in handle:
                seen += bool(chunk.delta)
                if seen == 2:
                    break
        assert trio.current_time() - start == 0.2  # no waiting for the rest of the answer
        await trio.testing.wait_all_tasks_blocked()
        [provider] = env.router.get_state_summary()["providers"]
        assert provider["in_flight"] == 0  # the upstream response was closed, its lease ended
        key = env.router.key("k")
        assert key is not None and key["in_flight"] == 0
        # Billed: the input (our count: the provider's report never came) and the two deltas read.
        worst = SimAdapter(env.transport).estimate(RequestIntent.from_openai(request))
        used = SimAdapter(env.transport).cost("gpt-4o-mini", Usage(worst.input_tokens, 2, estimated=True))
        assert handle.final_metadata is not None and handle.final_metadata.cost == used < worst.worst_case_cost
        assert Decimal(env.router.budgets()["global"]["spent"]) == used
        assert key["usage"]["tpm"] == worst.input_tokens + 2
