"""Small actors used by the kernel tests: a counter protocol and a recorder of start/stop order."""

from __future__ import annotations

from typing import assert_never

import attrs
import trio

from apikeyrouter.kernel import Actor, Reply


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Get:
    reply_to: Reply[int]


@attrs.frozen
class Boom:
    """Crash while handling an ask."""

    reply_to: Reply[int]


@attrs.frozen
class CrashNow:
    """Crash while handling a tell."""


@attrs.frozen
class Exit:
    """Stop normally, from inside."""


@attrs.frozen
class Later:
    """An ask answered later by a background task (an ask 'in progress')."""

    delay: float
    reply_to: Reply[int]


@attrs.frozen
class Block:
    """Keep the receive loop busy until the event is set."""

    until: trio.Event


CounterMsg = Add | Get | Boom | CrashNow | Exit | Later | Block


@attrs.frozen
class CounterState:
    total: int


class Counter(Actor[CounterMsg]):
    kind = "counter"

    def __init__(
        self,
        name: str,
        *,
        mailbox: int = 8,
        log: list[str] | None = None,
        stop_delay: float = 0.0,
        start_delay: float = 0.0,
        store: dict[str, int] | None = None,
    ) -> None:
        super().__init__(name, mailbox=mailbox)
        self.total = 0
        self.log = log if log is not None else []
        self.stop_delay = stop_delay
        self.start_delay = start_delay
        self.store = store

    async def pre_start(self) -> None:
        if self.start_delay:
            await trio.sleep(self.start_delay)
        if self.store is not None:
            self.total = self.store.get(self.name, 0)
        self.log.append(f"start {self.name}")

    async def post_stop(self) -> None:
        if self.stop_delay:
            await trio.sleep(self.stop_delay)
        self.log.append(f"stop {self.name}")

    def state_summary(self) -> CounterState:
        return CounterState(self.total)

    async def receive(self, msg: CounterMsg) -> None:
        match msg:
            case Add(n=n):
                self.total += n
                if self.store is not None:
                    self.store[self.name] = self.total
            case Get(reply_to=reply):
                reply.send(self.total)
            case Boom():
                raise RuntimeError("boom")
            case CrashNow():
                raise RuntimeError("crash")
            case Exit():
                self.stop()
            case Later(delay=delay, reply_to=reply):
                self.nursery.start_soon(self._answer_later, delay, reply)
            case Block(until=until):
                await until.wait()
            case _:
                assert_never(msg)

    async def _answer_later(self, delay: float, reply: Reply[int]) -> None:
        await trio.sleep(delay)
        reply.send(self.total)
