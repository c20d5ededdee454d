"""Property-based: every sampling field at its bounds and at extreme numbers, on chat, completions
and ``/generate`` of a live gateway (transformers engine, tiny model).

Never a 5xx; every refusal in the protocol's error shape; and afterwards the engine is healthy and
serves a plain request (no hostile value left anything broken behind it).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.security.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXTREME_FLOATS = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-300,
    1e-45,
    1e-5,
    0.01,
    0.009999,
    1.0,
    1.0000001,
    2.0,
    2.0000001,
    100.0,
    100.1,
    -100.0,
    -100.1,
    1e38,
    3.5e38,
    1e308,
    -1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]
EXTREME_INTS = [
    0,
    -1,
    -2,
    1,
    16,
    17,
    20,
    21,
    2**31 - 1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
]
WRONG_TYPES = [None, True, "1", [], {}]
numbers = st.one_of(
    st.sampled_from(EXTREME_FLOATS),
    st.sampled_from(EXTREME_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(WRONG_TYPES),
)
token_ids = st.one_of(st.sampled_from(EXTREME_INTS), st.integers(min_value=0, max_value=300))
logit_bias = st.one_of(
    st.dictionaries(
        st.one_of(token_ids.map(str), st.sampled_from(["05", "-1", "1e3", " 7", "x", "\u0661"])),
        numbers,
        max_size=4,
    ),
    st.builds(
        lambda n, v: {str(i): v for i in range(n)},
        st.sampled_from([1024, 1025, 5000]),
        st.sampled_from([100, -100]),
    ),
)


def _in(lo: float, hi: float, *, ints: bool = False) -> st.SearchStrategy[Any]:
    """A field's documented range, its bounds and the tiny values float32 cannot hold weighted in,
    or anything extreme."""
    if ints:
        return st.one_of(st.sampled_from([lo, hi, lo - 1, hi + 1]), st.integers(int(lo), int(hi)), numbers)
    edges = st.sampled_from(
        [lo, hi, 5e-324, 1e-300, 1e-45, math.nextafter(hi, math.inf), math.nextafter(lo, -math.inf)]
    )
    return st.one_of(edges, st.floats(lo, hi), edges, numbers)


prompt_ids = st.lists(token_ids, min_size=1, max_size=6)
prompts = st.one_of(
    st.just("hi"),
    prompt_ids,
    st.lists(st.one_of(st.just("hi"), prompt_ids, token_ids), min_size=1, max_size=3),
)
SAMPLING = {
    "temperature": _in(0.0, 2.0),
    "top_p": _in(0.0, 1.0),
    "top_k": _in(-1, 2**31 - 1, ints=True),
    "min_p": _in(0.0, 1.0),
    "presence_penalty": _in(-2.0, 2.0),
    "frequency_penalty": _in(-2.0, 2.0),
    "repetition_penalty": _in(0.01, 2.0),
    "seed": _in(-(2**63), 2**63 - 1, ints=True),
    "n": _in(1, 4, ints=True),
    "max_tokens": _in(1, 64, ints=True),
    "min_tokens": _in(0, 64, ints=True),
    "logit_bias": logit_bias,
    "stop_token_ids": st.lists(token_ids, max_size=3),
}
CHAT_ONLY = {
    "max_completion_tokens": _in(1, 64, ints=True),
    "logprobs": st.booleans(),
    "top_logprobs": _in(0, 20, ints=True),
}
COMPLETION_ONLY = {
    "logprobs": _in(0, 20, ints=True),
    "prompt_logprobs": _in(0, 20, ints=True),
    "best_of": numbers,
    "echo": st.booleans(),
}


def _fields(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={**SAMPLING, **extra})


def _body(fields: dict[str, Any]) -> bytes:
    # allow_nan: Infinity / NaN go out as the non-JSON tokens a hostile client would send.
    return json.dumps(fields, allow_nan=True).encode()


def _check(resp: httpx.Response, fields: dict[str, Any]) -> None:
    assert resp.status_code < 500, (fields, resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], body
        assert error["type"] in ("invalid_request_error", "rate_limit_error", "overloaded_error"), body


def _fuzz(port: int, key: str) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as http:

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(fields=_fields(CHAT_ONLY), stream=st.booleans())
        @example(fields={"repetition_penalty": 5e-324}, stream=True)
        @example(fields={"repetition_penalty": 1e-300, "temperature": 2.0}, stream=False)
        @example(fields={"top_p": 5e-324, "top_k": 2**63}, stream=True)
        @example(fields={"seed": 2**64, "n": 2}, stream=False)
        @example(fields={"temperature": 5e-324, "min_tokens": 2**40}, stream=True)
        def chat(fields: dict[str, Any], stream: bool) -> None:
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
                **fields,
            }
            _check(http.post("/v1/chat/completions", content=_body(body)), body)

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(fields=_fields(COMPLETION_ONLY), stream=st.booleans(), prompt=prompts)
        @example(
            fields={"repetition_penalty": 5e-324, "echo": True, "logprobs": 20}, stream=False, prompt="hi"
        )
        @example(fields={"max_tokens": 2**63, "best_of": 2**64}, stream=True, prompt="hi")
        @example(fields={}, stream=False, prompt=[111, [-4909806, -2169, 417]])  # a 500 on main
        def completions(fields: dict[str, Any], stream: bool, prompt: Any) -> None:
            body = {"model": "tiny", "prompt": prompt, "stream": stream, **fields}
            _check(http.post("/v1/completions", content=_body(body)), body)

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            fields=st.fixed_dictionaries(
                {}, optional={"max_tokens": _in(1, 64, ints=True), "temperature": _in(0.0, 2.0)}
            )
        )
        def generate(fields: dict[str, Any]) -> None:
            body = {"prompt": "hi", "expert": "general", **fields}
            _check(http.post("/generate", content=_body(body)), body)

        chat()
        completions()
        generate()
        plain = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        resp = http.post("/v1/chat/completions", content=_body(plain))
        assert resp.status_code == 200, resp.text
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy", health.text


async def test_sampling_fields_at_their_bounds_never_5xx(gw: Gateway) -> None:
    # The server runs on this event loop: drive hypothesis from a worker thread.
    await asyncio.to_thread(_fuzz, gw.port, gw.keys["user"])
