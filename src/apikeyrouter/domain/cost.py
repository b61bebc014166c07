"""Money from token counts, exactly.

Prices are quoted per one million tokens (as providers publish them). Every result is an exact
`Decimal`: token counts are integers and dividing by 10**6 is exact in decimal arithmetic, so
nothing is rounded here. Round only where money is shown to a human.

`worst_case` is what a budget reserves before a call: the input at the input price plus the whole
`max_output_tokens` at the output price. Input tokens are counted offline and a local tokenizer can
undercount a provider's count by a little, so callers may pass `input_margin` (a fraction, e.g.
`Decimal("0.05")`) to keep the worst case a true upper bound; a budget is only overspend-proof when
the actual cost never exceeds the reserved worst case.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from apikeyrouter.domain.request import Usage

__all__ = ["PER_MILLION", "CostEstimate", "ModelPrice", "blended_per_million", "cost", "tokens_cost", "worst_case"]

PER_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


def _non_negative(_inst: object, attribute: attrs.Attribute[Decimal], value: Decimal) -> None:
    if not isinstance(value, Decimal):
        raise TypeError(f"{attribute.name} must be a Decimal, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class ModelPrice:
    """Price per one million tokens, in one currency (USD in the shipped table). Also the `[providers.pricing]`
    record of the config file."""

    input: Decimal = attrs.field(validator=_non_negative)
    output: Decimal = attrs.field(validator=_non_negative)


def cost(price: ModelPrice, usage: Usage) -> Decimal:
    """The exact cost of `usage` at `price`."""
    return tokens_cost(price, usage.input_tokens, usage.output_tokens)


def tokens_cost(price: ModelPrice, input_tokens: int, output_tokens: int) -> Decimal:
    """The exact cost of `input_tokens` and `output_tokens` at `price` (`cost` without a `Usage` to build)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {input_tokens} in, {output_tokens} out")
    return (input_tokens * price.input + output_tokens * price.output) / PER_MILLION


def worst_case(
    price: ModelPrice,
    input_tokens: int,
    max_output_tokens: int,
    *,
    input_margin: Decimal = _ZERO,
) -> Decimal:
    """The most a call can cost: all of `max_output_tokens` produced, input inflated by `input_margin`.

    The margin is applied to the token count and rounded *up* to a whole token, so the result stays
    an upper bound.
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    if input_margin < 0:
        raise ValueError("input_margin must be >= 0")
    padded = (Decimal(input_tokens) * (1 + input_margin)).to_integral_value(rounding="ROUND_CEILING")
    return (padded * price.input + max_output_tokens * price.output) / PER_MILLION


def blended_per_million(price: ModelPrice, *, output_share: float = 0.25) -> float:
    """One number per price for ranking keys by cost: a weighted mean of input and output prices.

    `output_share` is the expected fraction of tokens that are output (chat traffic is mostly input).
    A float, because it only orders keys; it is never charged.
    """
    if not 0.0 <= output_share <= 1.0:
        raise ValueError("output_share must be within [0, 1]")
    return float(price.input) * (1.0 - output_share) + float(price.output) * output_share


@attrs.frozen
class CostEstimate:
    input_tokens: int
    max_output_tokens: int
    worst_case_cost: Decimal  # input at the input price + max_output at the output price
    price_known: bool = True  # False: no price for the model, worst_case_cost is 0 (not "free")
    exact_tokens: bool = True  # False: input_tokens is an estimate (no tokenizer for the model)
