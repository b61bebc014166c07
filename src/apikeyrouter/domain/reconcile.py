"""Reconcile: learn, per (provider, model), how actual usage compares with what a request's estimate held.

A budget holds the worst case — every input token we counted plus `max_tokens` of output — so that a hard
budget can never be overspent. Most answers use far less: the ratio of actual output tokens to
`max_tokens`, and of actual input tokens to our offline count, say how much less. They are learned as
exponentially weighted means (recent answers count more; `ALPHA` per sample) from answers whose usage
the provider reported (never from our own estimates), and read where an expected figure is the right
one: the `cost` objective's expected price (`expected_per_million`) and the projections shown for soft
budgets. Hard budgets keep holding the worst case.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import attrs

__all__ = ["ALPHA", "Ratio", "expected", "expected_per_million", "learn", "observe"]

ALPHA = 0.1


@attrs.frozen
class Ratio:
    output: float = 1.0  # actual output tokens / max_tokens
    input: float = 1.0  # actual input tokens / our estimate
    samples: int = 0


def learn(
    old: Ratio | None, *, estimated_input: int, max_output: int, actual_input: int, actual_output: int
) -> Ratio | None:
    """`old` with one answer's usage learned (None when the estimate had nothing to compare)."""
    if estimated_input <= 0 or max_output <= 0:
        return old
    out_r = min(1.0, max(0.0, actual_output / max_output))
    in_r = max(0.0, actual_input / estimated_input)
    if old is None:
        return Ratio(out_r, in_r, 1)
    return Ratio(old.output + ALPHA * (out_r - old.output), old.input + ALPHA * (in_r - old.input), old.samples + 1)


def observe(
    ratios: Mapping[tuple[str, str], Ratio],
    provider: str,
    model: str,
    *,
    estimated_input: int,
    max_output: int,
    actual_input: int,
    actual_output: int,
) -> dict[tuple[str, str], Ratio]:
    """The ratios with one answer's usage learned (unchanged when the estimate had nothing to compare)."""
    new = learn(
        ratios.get((provider, model)),
        estimated_input=estimated_input,
        max_output=max_output,
        actual_input=actual_input,
        actual_output=actual_output,
    )
    return dict(ratios) if new is None else {**ratios, (provider, model): new}


def expected(worst_case: Decimal, input_cost: Decimal, ratio: Ratio | None) -> Decimal:
    """The expected cost of a request whose worst case is `worst_case`, `input_cost` of it for input."""
    if ratio is None:
        return worst_case
    output_cost = worst_case - input_cost
    return input_cost * Decimal(repr(ratio.input)) + output_cost * Decimal(repr(ratio.output))


def expected_per_million(input_price: float, output_price: float, output_share: float, ratio: Ratio | None) -> float:
    """The expected price of a million tokens of a request whose worst case is `1 - output_share` of them
    input (our estimate) and `output_share` output (`max_tokens`): each part times its learned ratio.
    Nothing learned yet: the worst case itself (both ratios 1). A float: it only orders keys."""
    if ratio is None:
        return input_price * (1.0 - output_share) + output_price * output_share
    return input_price * (1.0 - output_share) * ratio.input + output_price * output_share * ratio.output
