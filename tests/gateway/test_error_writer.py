"""One error writer: every error body the gateway sends comes from ``errors.error_body``.

Each channel (a Litestar JSON response, a raw ASGI response, an in-band SSE event, the
exception handlers) is checked to write exactly that body with the headers its status needs,
and no other module of the gateway builds an error body of its own.
"""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.exceptions import NotFoundException
from litestar.testing import TestClient

from forge_gateway import errors
from forge_sdk.errors import (
    AuthenticationError,
    LargeForgeAIError,
    RateLimitError,
    RequestBodyTimeoutError,
    UpstreamError,
)

PACKAGE = Path(__file__).resolve().parents[2] / "gateway" / "forge_gateway"
CASES = [
    AuthenticationError("You didn't provide an API key."),
    RateLimitError("slow down", headers={"Retry-After": "3"}),
    RequestBodyTimeoutError("too slow"),
    UpstreamError("expert 'x' failed", param="model"),
    LargeForgeAIError("internal server error", code="internal_error"),
]


def _shape(body: bytes, exc: LargeForgeAIError) -> None:
    error = json.loads(body)["error"]
    assert error == {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}


def _expected_headers(exc: LargeForgeAIError) -> dict[str, str]:
    headers = {k.lower(): v for k, v in exc.headers.items()}
    if isinstance(exc, AuthenticationError):
        headers["www-authenticate"] = 'Bearer realm="forge-gateway"'
    if isinstance(exc, RequestBodyTimeoutError):
        headers["connection"] = "close"
    return headers


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_every_channel_writes_the_one_body(exc: LargeForgeAIError) -> None:
    body = errors.error_body(exc)
    _shape(body, exc)
    # Litestar response
    response = errors.error_response(exc)
    assert response.content == body and response.status_code == exc.status_code
    assert {k: v for k, v in response.headers.items() if k != "content-type"} == _expected_headers(exc)
    # raw ASGI
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(errors.send_error(send, exc))
    start, whole = sent
    assert start["status"] == exc.status_code and whole["body"] == body
    raw_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert raw_headers.pop("content-type") == "application/json"
    assert raw_headers.pop("content-length") == str(len(body))
    assert raw_headers == _expected_headers(exc)
    # in-band SSE
    assert errors.sse_error(exc) == b"data: " + body + b"\n\n"


def test_exception_handlers_go_through_the_one_writer() -> None:
    @get("/forge", sync_to_thread=False)
    def forge() -> None:
        raise AuthenticationError("no key")

    @get("/framework", sync_to_thread=False)
    def framework() -> None:
        raise NotFoundException()

    @get("/bug", sync_to_thread=False)
    def bug() -> None:
        raise ZeroDivisionError("secret detail")

    app = Litestar([forge, framework, bug], exception_handlers=errors.exception_handlers())
    with TestClient(app) as client:
        denied = client.get("/forge")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        assert denied.json()["error"]["type"] == "authentication_error"
        missing = client.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/framework").json()["error"]["type"] == "invalid_request_error"
        crashed = client.get("/bug")
        assert crashed.status_code == 500 and "secret" not in crashed.text
        assert crashed.json()["error"] == {
            "message": "internal server error",
            "type": "internal_error",
            "param": None,
            "code": "internal_error",
        }


def test_no_other_module_builds_an_error_body() -> None:
    builders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "ErrorResponse",
                "ErrorBody",
            ):
                builders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert builders == []
