"""The embedded router against the simulator: in-process on virtual time (exact times), and over real
HTTP on 127.0.0.1 where the socket itself is the point (a cancelled caller really disconnects)."""

from __future__ import annotations

import httpx
import pytest
import trio

from apikeyrouter import NoKeyAvailable
from apikeyrouter.domain.circuit import BreakerClosed, ProbeAdmitted
from apikeyrouter.messages.key import InjectCrash
from apikeyrouter.observe import KeyBreakerChanged, SupervisorChildCrashed, SupervisorChildRestarted
from apikeyrouter.sim import KeyBehavior
from tests.routing_env import chat, routing_env, settle_down
from tests.sim_transport import BASE_URL, SimEnv, sim_env

PREMIUM = {"metadata": {"quality": "premium"}}


async def burn(env: SimEnv, secret: str) -> None:
    """Spend a key's quota from outside the router (another process sharing the key)."""
    async with httpx.AsyncClient(transport=env.transport) as client:
        await client.post(
            f"{BASE_URL}/chat/completions",
            headers={"authorization": f"Bearer {secret}"},
            json=chat("elsewhere"),
        )


async def test_tight_key_fails_over_without_a_caller_visible_error(autojump_clock: object) -> None:
    async with sim_env(
        [("tight", "sk-sim-tight", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-tight", "rpm": 1}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        await burn(env, "sk-sim-tight")  # the router does not know: its first try gets the 429
        first = await env.router.route(chat("one"))
        assert (first.metadata.key_used, first.metadata.attempts) == ("good", 2)
        tight = env.router.key("tight")
        assert tight is not None and tight["lifecycle"] == "throttled"
        assert tight["lifecycle_until"] > trio.current_time() + 30  # the simulator's Retry-After
        second = await env.router.route(chat("two"))
        assert (second.metadata.key_used, second.metadata.attempts) == ("good", 1)
        explanation = second.metadata.decision.explanation
        assert "chose good" in explanation and "tight: throttled until" in explanation
        assert "Retry-After" in explanation
        assert env.sim.stats("sk-sim-tight").rate_limited == 1


async def test_router_routes_away_before_the_429_from_learned_headers(autojump_clock: object) -> None:
    async with sim_env(
        [("tight", "sk-sim-tight", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-tight", "rpm": 1}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        assert (await env.router.route(chat("one"))).metadata.key_used == "tight"
        # The answer said "0 requests remaining": the next request goes elsewhere, no 429 needed.
        second = await env.router.route(chat("two"))
        assert (second.metadata.key_used, second.metadata.attempts) == ("good", 1)
        tight = env.router.key("tight")
        assert tight is not None and tight["capacity"] == "exhausted" and tight["lifecycle"] == "active"
        explanation = second.metadata.decision.explanation
        assert "tight: quota exhausted" in explanation or "refused at reservation: tight" in explanation
        assert env.sim.stats("sk-sim-tight").rate_limited == 0


async def test_invalid_key_is_benched_after_one_401_and_never_tried_again(autojump_clock: object) -> None:
    async with sim_env(
        [("bad", "sk-sim-invalid", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-invalid", "behavior": "invalid"}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        for i in range(5):
            response = await env.router.route(chat(f"n{i}"))
            assert response.metadata.key_used == "good"
        bad = env.router.key("bad")
        assert bad is not None and bad["lifecycle"] == "invalid"
        assert env.sim.stats("sk-sim-invalid").requests == 1
        transitions = env.router.transitions("bad")
        assert [(t["from"], t["to"]) for t in transitions] == [("active", "invalid")]
        assert "auth_invalid" in transitions[0]["reason"]


async def test_exhausted_key_is_benched_until_its_window(autojump_clock: object) -> None:
    async with sim_env(
        [("dry", "sk-sim-exhausted", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-exhausted", "behavior": "exhausted"}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        for i in range(4):
            assert (await env.router.route(chat(f"n{i}"))).metadata.key_used == "good"
        dry = env.router.key("dry")
        assert dry is not None and dry["lifecycle"] == "exhausted"
        assert dry["lifecycle_until"] > trio.current_time() + 60
        assert env.sim.stats("sk-sim-exhausted").requests == 1


async def test_breaker_opens_sends_exactly_one_probe_and_closes(autojump_clock: object) -> None:
    async with sim_env(
        [("flaky", "sk-sim-flaky", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-flaky", "error_rate": 1.0, "seed": 7}],
        config={
            "routing": {"objective": "quality", "max_attempts": 3},
            "breaker": {"failure_threshold": 2, "cooldown": 0.3, "probe_deadline": 5.0},
        },
    ) as env:
        sub = env.router.events.subscribe(["key.breaker"], capacity=64)
        for i in range(3):
            assert (await env.router.route(chat(f"n{i}"))).metadata.key_used == "good"
        flaky = env.router.key("flaky")
        assert flaky is not None and flaky["breaker"] == "open"
        assert env.sim.stats("sk-sim-flaky").requests == 2  # the third request never tried it
        env.sim.set_behavior("sk-sim-flaky", KeyBehavior(latency_ms=300))  # healthy again, but slow
        await trio.sleep(0.35)
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(env.router.route, chat(f"burst{i}"))
                await trio.sleep(0.01)
        assert env.sim.stats("sk-sim-flaky").requests == 3  # exactly one half-open probe
        await settle_down(env.router)
        flaky = env.router.key("flaky")
        assert flaky is not None and flaky["breaker"] == "closed"
        changes = [e.change for e in sub.pending() if isinstance(e, KeyBreakerChanged) and e.key == "flaky"]
        assert [type(c) for c in changes].count(ProbeAdmitted) == 1
        assert isinstance(changes[-1], BreakerClosed)


async def test_all_keys_limited_waits_for_a_reset_inside_the_deadline(autojump_clock: object) -> None:
    async with sim_env(
        [("a", "sk-sim-a", {}), ("b", "sk-sim-b", {})],
        sim_defaults={"rpm": 1, "window_s": 1.0},
    ) as env:
        used = {(await env.router.route(chat(f"n{i}"))).metadata.key_used for i in range(2)}
        assert used == {"a", "b"}  # each key's one request per window is spent
        start = trio.current_time()
        with trio.fail_after(5):
            response = await env.router.route(chat("patient"))
        assert trio.current_time() - start == 1.0  # the simulator's window: the reset it announced
        assert response.metadata.attempts == 1


async def test_all_keys_limited_beyond_the_deadline_fails_at_once(autojump_clock: object) -> None:
    async with sim_env(
        [("a", "sk-sim-a", {}), ("b", "sk-sim-b", {})],
        sim_defaults={"rpm": 1, "window_s": 30.0},
    ) as env:
        for i in range(2):
            await env.router.route(chat(f"n{i}"))
        start = trio.current_time()
        with trio.fail_after(2), pytest.raises(NoKeyAvailable) as info:
            await env.router.route(chat("impatient"))
        assert trio.current_time() == start  # at once, not at the deadline
        assert info.value.retry_at is not None and info.value.retry_after is not None
        assert 10 < info.value.retry_after <= 31
        assert set(info.value.reasons) == {"a", "b"}


async def test_cancelled_caller_aborts_upstream_and_releases_the_reservation() -> None:
    async with routing_env([("slow", "sk-sim-slow", {})], sim_keys=[{"key": "sk-sim-slow", "latency_ms": 5000}]) as env:
        with trio.move_on_after(0.3) as scope:
            await env.router.route(chat("never mind"))
        assert scope.cancelled_caught
        with trio.fail_after(3):
            await env.sim.wait_for(lambda sim: sim.stats("sk-sim-slow").disconnects == 1)
        await settle_down(env.router)
        slow = env.router.key("slow")
        assert slow is not None and slow["in_flight"] == 0
        assert slow["usage"]["rpm"] == 0  # released, not settled: the provider never answered


async def test_key_actor_crash_restarts_with_its_state_and_siblings_unaffected(autojump_clock: object) -> None:
    async with sim_env(
        [("tight", "sk-sim-tight", PREMIUM), ("good", "sk-sim-good", {})],
        sim_keys=[{"key": "sk-sim-tight", "rpm": 1}],
        config={"routing": {"objective": "quality"}},
    ) as env:
        await burn(env, "sk-sim-tight")
        await env.router.route(chat("one"))
        before = env.router.key("tight")
        assert before is not None and before["lifecycle"] == "throttled"
        await env.router.key_ref("tight").tell(InjectCrash("chaos test"))
        with trio.fail_after(2):
            while (env.router.key("tight") or {}).get("restarts") != 1:
                await trio.sleep(0.01)
        after = env.router.key("tight")
        assert after is not None
        assert after["lifecycle"] == "throttled" and after["lifecycle_until"] == before["lifecycle_until"]
        good = env.router.key("good")
        assert good is not None and good["restarts"] == 0
        crashed, restarted = env.router.events.recent(kinds=["supervisor"])[-2:]
        assert isinstance(crashed, SupervisorChildCrashed) and isinstance(restarted, SupervisorChildRestarted)
        assert (crashed.child, crashed.reason, restarted.child) == (
            "key:tight",
            "RuntimeError: chaos test",
            "key:tight",
        )
        assert (await env.router.route(chat("three"))).metadata.key_used == "good"


async def test_500_concurrent_routes_over_20_keys_leak_nothing_and_respect_limits(autojump_clock: object) -> None:
    keys = [(f"k{i:02d}", f"sk-sim-{i:02d}", {"limits": {"rpm": 30}}) for i in range(20)]
    async with sim_env(keys) as env:
        results: list[str] = []

        async def one(i: int) -> None:
            with trio.fail_after(30):
                response = await env.router.route(chat(f"req {i}"))
            assert response.metadata is not None
            results.append(response.metadata.key_used)

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        await settle_down(env.router)
        assert len(results) == 500
        for key in env.router.keys():
            assert key["in_flight"] == 0
            assert key["usage"]["rpm"] <= 30
        per_key = {k: results.count(k) for k in set(results)}
        assert max(per_key.values()) <= 30
        assert sum(env.sim.stats(f"sk-sim-{i:02d}").requests for i in range(20)) == 500


async def test_requests_wait_for_a_free_in_flight_slot_within_the_deadline(autojump_clock: object) -> None:
    async with sim_env(
        [("solo", "sk-sim-solo", {"max_in_flight": 1})], sim_keys=[{"key": "sk-sim-solo", "latency_ms": 100}]
    ) as env:
        used: list[str] = []

        async def one(i: int) -> None:
            with trio.fail_after(5):
                response = await env.router.route(chat(f"queued {i}"))
            assert response.metadata is not None
            used.append(response.metadata.key_used)

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
        assert trio.current_time() - began == 0.1 + 0.1 + 0.1  # one after the other, 100 ms each
        assert used == ["solo"] * 3
        assert env.sim.stats("sk-sim-solo").requests == 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.router.route, chat("hog"))
            await trio.sleep(0.02)
            start = trio.current_time()
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.03):
                await env.router.route(chat("late"))  # the slot frees after the caller's deadline
            assert trio.current_time() == start + 0.03  # it waited for the deadline, no longer
        await settle_down(env.router)
