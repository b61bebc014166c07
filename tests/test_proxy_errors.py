"""The error table of the proxy, as plain sync tests: what each router error becomes on the wire."""

from __future__ import annotations

import pytest
import trio

from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.errors import BudgetExceeded, NoKeyAvailable, StoreError, UnknownModel, UpstreamError
from apikeyrouter.proxy._errors import http_error_for, retry_after_seconds, scrub


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Incorrect API key provided: sk-proj-abcDEF123456789", "abcDEF123456789"),
        ("key sk-ant-api03-XYZxyz0123456789 rejected", "XYZxyz0123456789"),
        ("header was Bearer abc.def.ghi", "abc.def.ghi"),
        ("token " + "a1" * 30, "a1" * 30),
    ],
)
def test_scrub_redacts_credentials(text: str, leaked: str) -> None:
    assert leaked not in scrub(text)
    assert "[redacted]" in scrub(text)


def test_scrub_keeps_ordinary_text() -> None:
    message = "This model's maximum context length is 128000 tokens; you asked for 130000."
    assert scrub(message) == message


@pytest.mark.parametrize(("seconds", "header"), [(0.01, 1), (1.0, 1), (1.2, 2), (59.9, 60)])
def test_retry_after_rounds_up_to_whole_seconds(seconds: float, header: int) -> None:
    assert retry_after_seconds(NoKeyAvailable("x", retry_after=seconds)) == header


def test_retry_after_from_retry_at_uses_trio_time() -> None:
    async def main() -> int | None:
        return retry_after_seconds(NoKeyAvailable("x", retry_at=trio.current_time() + 4.5))

    assert trio.run(main) == 5
    assert retry_after_seconds(NoKeyAvailable("x")) is None


def test_errors_inside_exception_groups_are_unwrapped() -> None:
    error = http_error_for(ExceptionGroup("router", [ExceptionGroup("inner", [UnknownModel("gpt-9")])]))
    assert (error.status, error.code) == (404, "model_not_found")


def test_a_rate_limited_key_among_broken_ones_is_still_503() -> None:
    error = http_error_for(NoKeyAvailable("x", reasons={"a": "throttled", "b": "breaker open"}))
    assert error.status == 503


def test_budget_exceeded_is_429_insufficient_quota() -> None:
    error = http_error_for(BudgetExceeded("monthly budget spent", budget="global"))
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "budget_exceeded")


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (FailureClass.BAD_REQUEST, 422),
        (FailureClass.CONTEXT_LENGTH, 400),
        (FailureClass.CONTENT_POLICY, 400),
        (FailureClass.RATE_LIMITED, 502),
        (FailureClass.QUOTA_EXHAUSTED, 502),
        (FailureClass.OVERLOADED, 502),
        (FailureClass.CONNECTION, 502),
        (FailureClass.TIMEOUT, 504),
    ],
)
def test_upstream_failures(failure: FailureClass, status: int) -> None:
    upstream_status = 422 if failure is FailureClass.BAD_REQUEST else None
    error = http_error_for(UpstreamError("upstream said sk-abcdef0123456789", failure=failure, status=upstream_status))
    assert error.status == status
    assert "sk-abcdef" not in error.message


def test_a_store_that_cannot_answer_is_503_store_unavailable() -> None:
    error = http_error_for(StoreError("the redis store is unavailable: connection refused", path="config.store.url"))
    assert (error.status, error.code) == (503, "store_unavailable")
