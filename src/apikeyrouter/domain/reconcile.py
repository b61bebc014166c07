"""Reconcile: learn, per (provider, model), how actual usage compares with what a request's estimate held.

A budget holds the worst case — every input token we counted plus `max_tokens` of output — so that a hard
budget can never be overspent. Most answers use far less: the ratio of actual output tokens to
`max_tokens`, and of actual input tokens to our offline count, say how much less. They are learned as
exponentially weighted means (recent answers count more; `ALPHA` per sample) from answers whose usage
the provider reported (never from our own estimates), and read where an expected figure is the right
one: the projections shown for soft budgets. Hard budgets keep holding the worst case.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import attrs

__all__ = ["ALPHA", "Ratio", "expected", "observe"]

ALPHA = 0.1


@attrs.frozen
class Ratio:
    output: float = 1.0  # actual output tokens / max_tokens
    input: float = 1.0  # actual input tokens / our estimate
    samples: int = 0


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
    if estimated_input <= 0 or max_output <= 0:
        return dict(ratios)
    old = ratios.get((provider, model))
    out_r = min(1.0, max(0.0, actual_output / max_output))
    in_r = max(0.0, actual_input / estimated_input)
    new = (
        Ratio(out_r, in_r, 1)
        if old is None
        else Ratio(
            old.output + ALPHA * (out_r - old.output), old.input + ALPHA * (in_r - old.input), old.samples + 1
        )
    )
    return {**ratios, (provider, model): new}


def expected(worst_case: Decimal, input_cost: Decimal, ratio: Ratio | None) -> Decimal:
    """The expected cost of a request whose worst case is `worst_case`, `input_cost` of it for input."""
    if ratio is None:
        return worst_case
    output_cost = worst_case - input_cost
    return input_cost * Decimal(repr(ratio.input)) + output_cost * Decimal(repr(ratio.output))
