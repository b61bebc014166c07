"""List prices per 1M tokens (USD, Decimal) and cost arithmetic.

Basis: the providers' published standard (non-batch, non-cached) list prices as of 2025-11, checked
against openai.com/api/pricing and anthropic.com/pricing summaries. Prices change: every table is
overridable (`PriceTable(overrides=...)`, and in config), and a model we do not know costs 0 with
`known=False` rather than a guess, so budgets can refuse or warn on unpriced models instead of silently
mis-charging.

Lookup: an exact id wins; otherwise the longest table entry that the id extends with a snapshot
suffix only (`-2024-08-06`, `-20250514`, `-0125`, `-latest`). A different variant (`gpt-4o-audio-preview`,
a future `claude-opus-4-9`) is *not* priced as its base model: unknown is safer than wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal

import attrs

from apikeyrouter.domain.cost import ModelPrice, tokens_cost
from apikeyrouter.domain.request import Usage

__all__ = ["DEFAULT_PRICES", "ModelPrice", "PriceTable", "PricedCost"]


@attrs.frozen
class PricedCost:
    amount: Decimal
    known: bool  # False: no price for this model, `amount` is 0
    matched: str | None = None  # the table entry used


def _p(i: str | Decimal | int, o: str | Decimal | int) -> ModelPrice:
    return ModelPrice(Decimal(i), Decimal(o))


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    # OpenAI
    "gpt-5": _p("1.25", "10.00"),
    "gpt-5-mini": _p("0.25", "2.00"),
    "gpt-5-nano": _p("0.05", "0.40"),
    "gpt-4.1": _p("2.00", "8.00"),
    "gpt-4.1-mini": _p("0.40", "1.60"),
    "gpt-4.1-nano": _p("0.10", "0.40"),
    "gpt-4o": _p("2.50", "10.00"),
    "gpt-4o-2024-05-13": _p("5.00", "15.00"),  # the first gpt-4o snapshot kept its launch price
    "gpt-4o-mini": _p("0.15", "0.60"),
    "o1": _p("15.00", "60.00"),
    "o3": _p("2.00", "8.00"),
    "o3-mini": _p("1.10", "4.40"),
    "o4-mini": _p("1.10", "4.40"),
    "gpt-4-turbo": _p("10.00", "30.00"),
    "gpt-4": _p("30.00", "60.00"),
    "gpt-3.5-turbo": _p("0.50", "1.50"),
    # Anthropic
    "claude-opus-4-5": _p("5.00", "25.00"),
    "claude-opus-4-1": _p("15.00", "75.00"),
    "claude-opus-4": _p("15.00", "75.00"),
    "claude-opus-4-0": _p("15.00", "75.00"),
    "claude-sonnet-4-5": _p("3.00", "15.00"),
    "claude-sonnet-4": _p("3.00", "15.00"),
    "claude-sonnet-4-0": _p("3.00", "15.00"),
    "claude-haiku-4-5": _p("1.00", "5.00"),
    "claude-3-7-sonnet": _p("3.00", "15.00"),
    "claude-3-5-sonnet": _p("3.00", "15.00"),
    "claude-3-5-haiku": _p("0.80", "4.00"),
    "claude-3-opus": _p("15.00", "75.00"),
    "claude-3-haiku": _p("0.25", "1.25"),
}

# What may follow a table entry and still be "the same model": a dated or aliased snapshot.
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest|v\d+(:\d+)?)")


def _as_price(value: ModelPrice | tuple[str | Decimal | int, str | Decimal | int]) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    i, o = value
    return _p(i, o)


class PriceTable:
    """Immutable after construction; lookups are memoised (the id space seen in practice is tiny)."""

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice | tuple[str | Decimal | int, str | Decimal | int]] | None = None,
        *,
        base: Mapping[str, ModelPrice] = DEFAULT_PRICES,
    ) -> None:
        table = dict(base)
        for model, price in (overrides or {}).items():
            table[model] = _as_price(price)
        self._table = table
        self._by_length = sorted(table, key=len, reverse=True)
        self._memo: dict[str, str | None] = {}

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._table)

    def match(self, model: str) -> str | None:
        """The table entry that prices `model`, or None."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        found: str | None = model if model in self._table else None
        if found is None:
            for entry in self._by_length:
                if model.startswith(entry) and _SNAPSHOT_SUFFIX.fullmatch(model, len(entry)):
                    found = entry
                    break
        if len(self._memo) < 4096:
            self._memo[model] = found
        return found

    def price(self, model: str) -> ModelPrice | None:
        entry = self.match(model)
        return None if entry is None else self._table[entry]

    def priced(self, model: str, input_tokens: int, output_tokens: int) -> PricedCost:
        entry = self.match(model)
        if entry is None:
            return _UNPRICED
        return PricedCost(tokens_cost(self._table[entry], input_tokens, output_tokens), known=True, matched=entry)

    def cost(self, model: str, usage: Usage) -> Decimal:
        """What `usage` costs; never negative and never raises, whatever reached it (a count below zero is
        none: adapters replace impossible reports before this, so this guards custom adapters). Prices are
        never negative (`ModelPrice` refuses them), so neither is the product."""
        entry = self.match(model)
        if entry is None:
            return _ZERO
        return tokens_cost(self._table[entry], max(0, usage.input_tokens), max(0, usage.output_tokens))


_ZERO = Decimal(0)
_UNPRICED = PricedCost(_ZERO, known=False)
