"""A benched key's wake-up timer must not hold up shutdown (it used to wait out the 30 s grace)."""

from __future__ import annotations

from decimal import Decimal

import trio

from apikeyrouter.adapters import OpenAIAdapter
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.messages.key import Granted, Outcome, Reserve, Settle
from apikeyrouter.runtime import ApiKeyRouter


async def test_router_with_a_throttled_key_stops_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with ApiKeyRouter() as router:
        await router.register_provider("openai", OpenAIAdapter(base_url="http://127.0.0.1:9/v1"))
        await router.register_key("sk-test-throttled", "openai", key_id="k1")
        ref = router.key_ref("k1")
        grant = await ref.ask(lambda r: Reserve("req-1", "gpt-4o-mini", 10, Decimal(0), trio.current_time() + 60, r))
        assert isinstance(grant, Granted)
        await ref.tell(Settle(grant.reservation_id, Outcome(FailureClass.RATE_LIMITED, retry_after=3600)))
        await trio.testing.wait_all_tasks_blocked()
        key = router.key("k1")
        assert key is not None and key["lifecycle"] == "throttled"
        stopping = trio.current_time()
    # Virtual time: with the timer left running, exit took the keys' whole shutdown grace (30 s).
    assert trio.current_time() - stopping < 1.0
