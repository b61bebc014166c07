"""A supervised actor tree: a crash is restarted with state restored, and the tree stops in order.

    python examples/supervised_tree.py
"""

from __future__ import annotations

from typing import assert_never

import attrs
import trio

from apikeyrouter.kernel import Actor, Reply
from apikeyrouter.kernel.actor import TreeNode
from apikeyrouter.kernel.spec import ChildSpec, Strategy, SupervisorSpec
from apikeyrouter.supervisors import Supervisor


@attrs.frozen
class Deposit:
    amount: int


@attrs.frozen
class Balance:
    reply_to: Reply[int]


@attrs.frozen
class Explode:
    pass


AccountMsg = Deposit | Balance | Explode

STORE: dict[str, int] = {}  # stands in for the state store a key actor restores from


class Account(Actor[AccountMsg]):
    kind = "account"

    def __init__(self, name: str) -> None:
        super().__init__(name, mailbox=16)
        self.balance = 0

    async def pre_start(self) -> None:
        self.balance = STORE.get(self.name, 0)  # a restart restores, never resets

    def receive(self, msg: AccountMsg) -> None:
        match msg:
            case Deposit(amount=amount):
                self.balance += amount
                STORE[self.name] = self.balance
            case Balance(reply_to=reply):
                reply.send(self.balance)
            case Explode():
                raise RuntimeError("simulated fault")
            case _:
                assert_never(msg)

    def state_summary(self) -> int:
        return self.balance


def render(node: TreeNode, depth: int = 0) -> None:
    mailbox = f" mailbox {node.mailbox_depth}/{node.mailbox_capacity}" if node.mailbox_capacity else ""
    print(f"{'  ' * depth}{node.name} [{node.kind}] {node.status} restarts={node.restarts}{mailbox}")
    for child in node.children:
        render(child, depth + 1)


async def main() -> None:
    accounts = Supervisor(
        "accounts",
        SupervisorSpec(strategy=Strategy.ONE_FOR_ONE, intensity=3, period=5),
        [ChildSpec(name, lambda name=name: Account(name)) for name in ("alice", "bob")],  # type: ignore[misc]
    )
    root = Supervisor("root", children=[ChildSpec("accounts", lambda: accounts)])
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        alice = accounts.child("alice")
        assert isinstance(alice, Account)
        ref = alice.ref
        await ref.tell(Deposit(40))
        print("alice before the crash:", await ref.ask(Balance))
        await ref.tell(Explode())
        await trio.sleep(0.01)
        print("alice after the restart:", await ref.ask(Balance), "(same ref, state restored)")
        render(root.tree())
        root.stop()
    print("tree stopped:", root.status)


if __name__ == "__main__":
    trio.run(main)
