"""The one place that turns an error into the OpenAI error shape, on every channel.

Every error body the gateway sends comes from :func:`error_body`: as a JSON response from a
Litestar handler (:func:`error_response`, the exception handlers), written straight to the
socket by the pure-ASGI layers (:func:`send_error`), or in-band in a stream that has already
started (:func:`sse_error`). :func:`error_headers` adds what the status needs
(``www-authenticate`` on a 401, ``connection: close`` when the body was left unread).

LargeForge errors carry their status, ``type`` and ``code`` on the class; Litestar's own HTTP
errors (unknown route, wrong method, body too large) are mapped by status; anything else is a
500 with a generic message, logged with its traceback server-side and never sent to the client.
This module does not import Litestar at import time (the upstream client uses it too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from forge_sdk import errors
from forge_sdk.types import ErrorBody, ErrorResponse

if TYPE_CHECKING:
    from litestar import Request, Response
    from litestar.exceptions import HTTPException

__all__ = [
    "error_body",
    "error_headers",
    "error_response",
    "exception_handlers",
    "internal_error",
    "send_error",
    "sse_error",
    "validation_error",
]

log = structlog.get_logger("forge_gateway.errors")
_encode = msgspec.json.Encoder().encode

_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_WWW_AUTHENTICATE = 'Bearer realm="forge-gateway"'


def error_body(exc: errors.LargeForgeAIError) -> bytes:
    """The OpenAI error object for ``exc``, as JSON bytes (the only builder of error bodies)."""
    return _encode(ErrorResponse(ErrorBody(exc.message, exc.error_type, exc.param, exc.code)))


def error_headers(exc: errors.LargeForgeAIError) -> dict[str, str]:
    """The headers an error response carries besides its content type (lower-case names)."""
    headers = {name.lower(): value for name, value in (exc.headers or {}).items()}
    if isinstance(exc, errors.AuthenticationError):
        headers.setdefault("www-authenticate", _WWW_AUTHENTICATE)
    if isinstance(exc, errors.RequestBodyTimeoutError):
        headers["connection"] = "close"  # the rest of the body is not read
    return headers


def internal_error() -> errors.LargeForgeAIError:
    """The generic 500 a client sees for an unexpected failure (the details stay in the log)."""
    return errors.LargeForgeAIError("internal server error", code="internal_error")


def error_response(exc: errors.LargeForgeAIError) -> Response[bytes]:
    """``exc`` as a Litestar JSON response."""
    from litestar import Response

    return Response(
        error_body(exc),
        status_code=exc.status_code,
        media_type="application/json",
        headers=error_headers(exc),
    )


async def send_error(send: Any, exc: errors.LargeForgeAIError) -> None:
    """Write ``exc`` as a whole JSON response on a raw ASGI ``send``."""
    body = error_body(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error_headers(exc).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def sse_error(exc: errors.LargeForgeAIError) -> bytes:
    """``exc`` as an in-band server-sent event, for a stream whose headers are already sent."""
    return b"data: " + error_body(exc) + b"\n\n"


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> errors.InvalidRequestError:
    """A 400 from a msgspec decode failure, naming the field (``$.messages[0].role`` -> param)."""
    message = str(exc)
    param = None
    if " - at `$." in message:
        param = message.rsplit(" - at `$.", 1)[1].rstrip("`")
    if not isinstance(exc, msgspec.ValidationError):  # ValidationError subclasses DecodeError
        return errors.InvalidRequestError(f"request body is not valid JSON: {message}", code="invalid_json")
    return errors.InvalidRequestError(f"invalid request: {message}", param=param)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> errors.LargeForgeAIError:
    """Litestar's own HTTP errors (unknown route, wrong method, body too large) by status."""
    status = exc.status_code
    error_type, code = _BY_STATUS.get(
        status, ("internal_error" if status >= 500 else "invalid_request_error", "")
    )
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else "request failed"
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    error = errors.LargeForgeAIError(message, headers=dict(exc.headers or {}))
    error.status_code, error.error_type, error.code = status, error_type, code or None
    return error


def _forge_handler(request: Request[Any, Any, Any], exc: errors.LargeForgeAIError) -> Response[bytes]:
    if exc.status_code >= 500:
        log.warning("request_failed", error=type(exc).__name__, status=exc.status_code, message=exc.message)
    return error_response(exc)


def _http_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return error_response(_http_error(request, exc))


def _internal_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled_error", path=request.url.path)
    return error_response(internal_error())


def exception_handlers() -> dict[type[Exception], Any]:
    """Litestar's exception handlers: every error a handler raises goes through :func:`error_response`."""
    from litestar.exceptions import HTTPException

    return {
        errors.LargeForgeAIError: _forge_handler,
        HTTPException: _http_handler,
        Exception: _internal_handler,
    }
