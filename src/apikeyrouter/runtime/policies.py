"""The live policy set: one immutable tuple swapped whole, a bounded cache of resolutions, and an audit.

A request resolves its effective policy once (domain/policy.py `resolve`), from a cache keyed by what
resolution reads — (model, client, team, tags, wall hour) — so with 100 policies loaded a decision
pays a dict lookup, not a scan. Every change replaces the tuple and clears the cache in one step (the
event loop runs one task at a time: no request ever sees half a change). A change is validated before
it is applied: a set with any error is refused whole, with every error.

A request may carry policies of its own (`request_policies`: scope `request`, the most specific):
validated like any other, resolved with the live set for that request alone, never cached (a request
without one pays nothing for the feature).

The audit keeps the recent changes: who (the admin token's fingerprint, "config", "library"), when
(wall clock, for humans), what (configure / remove / replace) and the policy before and after.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from apikeyrouter.config import structure_policies
from apikeyrouter.domain.policy import EffectivePolicy, Policy, RequestContext, Universe, resolve, validate
from apikeyrouter.domain.walltime import render_wall
from apikeyrouter.errors import PolicyRejected

__all__ = ["PolicyBook", "PolicyRejected", "RequestPolicy", "policy_json", "request_policies"]

RequestPolicy = Policy | Mapping[str, Any] | Sequence[Policy | Mapping[str, Any]]

_CACHE = 4096
_AUDIT = 200


def policy_json(policy: Policy) -> dict[str, Any]:
    """A policy as plain JSON values (Decimals as strings)."""

    def value(v: Any) -> Any:
        if attrs.has(type(v)):
            return {f.name: value(getattr(v, f.name)) for f in attrs.fields(type(v))}
        if isinstance(v, tuple):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return str(v)

    out: dict[str, Any] = value(policy)
    return out


class PolicyBook:
    def __init__(
        self, policies: Iterable[Policy], *, universe: Callable[[], Universe], wall_offset: Callable[[], float]
    ):
        self._policies: tuple[Policy, ...] = tuple(policies)
        self._universe = universe
        self._wall_offset = wall_offset
        self._cache: OrderedDict[tuple[Any, ...], EffectivePolicy] = OrderedDict()
        self.audit: deque[dict[str, Any]] = deque(maxlen=_AUDIT)
        self.version = 0

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._policies

    def get(self, policy_id: str) -> Policy | None:
        return next((p for p in self._policies if p.id == policy_id), None)

    # -- reading ----------------------------------------------------------------------------------------

    def effective(
        self,
        model: str,
        client: str | None,
        team: str | None,
        tags: frozenset[str],
        now: float,
        own: tuple[Policy, ...] = (),
    ) -> EffectivePolicy | None:
        """The effective policy of a request (None when no policy is loaded: the router's fast path).
        `own`: the request's own policies (scope request), resolved with the live set, uncached."""
        if own:
            ctx = RequestContext(model, client, team, tags, now + self._wall_offset())
            return resolve((*self._policies, *own), ctx)
        if not self._policies:
            return None
        wall = now + self._wall_offset()
        key = (model, client, team, tags, int(wall // 3600))  # time-of-day matches are by the hour
        found = self._cache.get(key)
        if found is None:
            found = resolve(self._policies, RequestContext(model, client, team, tags, wall))
            self._cache[key] = found
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return found

    def check(self, policies: Sequence[Policy], indexes: Sequence[int] | None = None) -> list[str]:
        """Every problem as `policies[i].field: message`; `indexes`: each policy's place among what the
        caller was given (when some could not even be structured), so paths point at the caller's list."""
        out = []
        for path, message in validate(policies, self._universe()):
            if indexes is not None:
                head, _, rest = path.partition("]")
                path = f"policies[{indexes[int(head.removeprefix('policies['))]}]{rest}"
            out.append(f"{path}: {message}")
        return out

    # -- changing ---------------------------------------------------------------------------------------

    def replace(self, policies: Sequence[Policy], *, who: str, now: float, action: str = "replace") -> None:
        """Validate the whole new set, then apply it at once (or raise `PolicyRejected`, nothing changed)."""
        errors = self.check(policies)
        if errors:
            raise PolicyRejected(errors)
        before = {p.id: p for p in self._policies}
        after = {p.id: p for p in policies}
        self._policies = tuple(policies)
        self._cache.clear()
        self.version += 1
        for pid in sorted(before.keys() | after.keys()):
            if before.get(pid) != after.get(pid):
                self._audit(who, now, action, before.get(pid), after.get(pid), pid)

    def configure(self, policy: Policy, *, who: str, now: float) -> None:
        """Add a policy, or replace the one with its id."""
        kept = [p for p in self._policies if p.id != policy.id]
        at = next((i for i, p in enumerate(self._policies) if p.id == policy.id), len(kept))
        self.replace([*kept[:at], policy, *kept[at:]], who=who, now=now, action="configure")

    def remove(self, policy_id: str, *, who: str, now: float) -> bool:
        if self.get(policy_id) is None:
            return False
        self.replace([p for p in self._policies if p.id != policy_id], who=who, now=now, action="remove")
        return True

    def _audit(self, who: str, now: float, action: str, before: Policy | None, after: Policy | None, pid: str) -> None:
        self.audit.append(
            {
                "at": now,
                "at_wall": render_wall(now, self._wall_offset()),
                "who": who,
                "action": action,
                "policy": pid,
                "before": None if before is None else policy_json(before),
                "after": None if after is None else policy_json(after),
            }
        )


def request_policies(book: PolicyBook, given: RequestPolicy, *, param: str = "policy") -> tuple[Policy, ...]:
    """A request's own policies, checked with the same validator as the live set (`PolicyRejected`,
    with `param` and every error, field paths `policy.effect.objective` or `policy[1].kind`). A table
    may leave out `scope` (it can only be `request`) and `id` ("request", or "request-<i>" in a list).
    A budget needs a place to live between requests: a request's own policy cannot hold one."""
    single = isinstance(given, Policy | Mapping)
    items: list[Any] = [given] if single else list(given)  # type: ignore[arg-type]
    if all(isinstance(p, Policy) and p.scope == "request" and p.effect.budget is None for p in items):
        errors = book.check(items)  # values already (a proxy's header, validated once): no tables to read
        if errors:
            raise PolicyRejected([e.replace("policies[", "policy[", 1) for e in errors], param=param)
        return tuple(items)
    raws: list[Any] = []
    for i, item in enumerate(items):
        raw = policy_json(item) if isinstance(item, Policy) else dict(item) if isinstance(item, Mapping) else item
        if isinstance(raw, dict):
            raw.setdefault("scope", "request")
            raw.setdefault("id", "request" if single else f"request-{i}")
        raws.append(raw)
    parsed, errors, indexes = structure_policies(raws)
    errors += book.check(parsed, indexes)
    for policy, i in zip(parsed, indexes, strict=True):
        if policy.scope != "request":
            errors.append(f"policies[{i}].scope: a request's own policy has scope request, not {policy.scope!r}")
        if policy.effect.budget is not None:
            errors.append(f"policies[{i}].effect.budget: a request's own policy cannot hold a budget (configure it)")
    if errors:
        old, new = ("policies[0]", "policy") if single else ("policies[", "policy[")
        raise PolicyRejected(sorted(e.replace(old, new, 1) for e in errors), param=param)
    return tuple(parsed)
