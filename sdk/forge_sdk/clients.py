"""Python clients for a LargeForge gateway (SDD §7.2): sync, async, and the router client.

Errors come back as the SDK's error classes (a 404 raises :class:`NotFoundError`, a 429
:class:`RateLimitError`, ...); timeouts and connect errors are retried per SDD §9.3.
"""

from __future__ import annotations

from typing import Any

import httpx

from forge_sdk import errors
from forge_sdk.retry import RETRY_CONFIG, RetryPolicy

__all__ = ["AsyncInferenceClient", "InferenceClient", "RouterClient"]

_BY_STATUS: dict[int, type[errors.LargeForgeAIError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    413: errors.PayloadTooLargeError,
    429: errors.RateLimitError,
    502: errors.UpstreamError,
    503: errors.OverloadedError,
    504: errors.RequestTimeoutError,
}


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json().get("error", {})
        message, code, param = body.get("message", response.text), body.get("code"), body.get("param")
    except (ValueError, AttributeError):
        message, code, param = response.text or response.reason_phrase, None, None
    cls = _BY_STATUS.get(response.status_code, errors.LargeForgeAIError)
    error = cls(
        f"HTTP {response.status_code}: {message}", code=code, param=param, headers=dict(response.headers)
    )
    error.status_code = response.status_code
    raise error


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _generate_body(
    prompt: str | None,
    messages: list[dict[str, str]] | None,
    max_tokens: int,
    temperature: float,
    expert: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if prompt is not None:
        body["prompt"] = prompt
    if messages is not None:
        body["messages"] = messages
    if expert is not None:
        body["expert"] = expert
    return body


def _chat_body(
    message: str, system: str | None, model: str, max_tokens: int, temperature: float
) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": message})
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}


class InferenceClient:
    """Blocking client for one gateway.

    Args:
        base_url: gateway root, e.g. ``http://localhost:8000``.
        timeout: seconds per request.
        api_key: sent as ``Authorization: Bearer``.
        retry: retry policy (SDD §9.3 by default).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 60.0,
        api_key: str | None = None,
        retry: RetryPolicy = RETRY_CONFIG,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=_headers(api_key))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.retry.call(lambda: self._client.request(method, path, **kwargs))
        _raise_for_error(response)
        return response.json()

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return self._request("GET", "/health")  # type: ignore[no-any-return]

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.7,
        expert: str | None = None,
    ) -> dict[str, Any]:
        """``POST /generate``: ``{"text", "expert", "tokens_used"}``."""
        return self._request(
            "POST",
            "/generate",  # type: ignore[no-any-return]
            json=_generate_body(prompt, messages, max_tokens, temperature, expert),
        )

    def chat(
        self,
        message: str,
        system: str | None = None,
        *,
        model: str = "auto",
        max_tokens: int = 512,
        temperature: float = 0.7,
    ) -> dict[str, Any]:
        """One chat turn through ``/v1/chat/completions``; returns the OpenAI response dict."""
        return self._request(
            "POST",
            "/v1/chat/completions",  # type: ignore[no-any-return]
            json=_chat_body(message, system, model, max_tokens, temperature),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RouterClient(InferenceClient):
    """Client for the routing endpoints (SDD §7.2 ``RouterClient``)."""

    def list_experts(self) -> list[dict[str, Any]]:
        """``GET /experts``: the experts with their state."""
        return self._request("GET", "/experts")["experts"]  # type: ignore[no-any-return]

    def route(self, query: str) -> dict[str, Any]:
        """``POST /route?query=``: ``{"expert", "endpoint", "confidence", ...}``."""
        return self._request("POST", "/route", params={"query": query})  # type: ignore[no-any-return]


class AsyncInferenceClient:
    """Async twin of :class:`InferenceClient`."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 60.0,
        api_key: str | None = None,
        retry: RetryPolicy = RETRY_CONFIG,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=_headers(api_key))

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.retry.acall(lambda: self._client.request(method, path, **kwargs))
        _raise_for_error(response)
        return response.json()

    async def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return await self._request("GET", "/health")  # type: ignore[no-any-return]

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.7,
        expert: str | None = None,
    ) -> dict[str, Any]:
        """``POST /generate``."""
        return await self._request(
            "POST",
            "/generate",  # type: ignore[no-any-return]
            json=_generate_body(prompt, messages, max_tokens, temperature, expert),
        )

    async def chat(
        self,
        message: str,
        system: str | None = None,
        *,
        model: str = "auto",
        max_tokens: int = 512,
        temperature: float = 0.7,
    ) -> dict[str, Any]:
        """One chat turn through ``/v1/chat/completions``."""
        return await self._request(
            "POST",
            "/v1/chat/completions",  # type: ignore[no-any-return]
            json=_chat_body(message, system, model, max_tokens, temperature),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
