from __future__ import annotations

import httpx
import pytest

from forge_sdk import RetryPolicy, errors


def test_every_error_derives_from_the_root_and_carries_a_status() -> None:
    names = [n for n in errors.__all__]
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LargeForgeAIError)
        assert 400 <= cls.status_code <= 599
    assert errors.ModelNotFoundError.status_code == 404
    assert issubclass(errors.ModelNotFoundError, errors.ModelError)
    assert issubclass(errors.ModelNotFoundError, errors.NotFoundError)
    assert errors.RateLimitError.status_code == 429
    assert errors.ContextLengthExceededError.code == "context_length_exceeded"


def test_error_fields() -> None:
    exc = errors.RateLimitError("slow down", headers={"Retry-After": "3"}, param="x")
    assert exc.message == "slow down" and exc.headers == {"Retry-After": "3"} and exc.param == "x"
    assert exc.code == "rate_limit_exceeded"


def test_retry_policy_backoff_and_cap() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert [policy.delay(i) for i in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_retry_retries_only_retryable_exceptions() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.0, jitter=0.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused")
        return "ok"

    assert policy.call(flaky) == "ok" and len(calls) == 3

    calls.clear()

    def always() -> str:
        calls.append(1)
        raise httpx.ConnectTimeout("slow")

    with pytest.raises(httpx.ConnectTimeout):
        policy.call(always)
    assert len(calls) == 3

    def bad() -> str:
        raise ValueError("not retryable")

    with pytest.raises(ValueError):
        policy.call(bad)
