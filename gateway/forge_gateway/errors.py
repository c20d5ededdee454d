"""One place that turns any error into the OpenAI error shape.

LargeForge errors carry their status, ``type`` and ``code`` on the class; Litestar's own HTTP
errors (unknown route, wrong method, body too large) are mapped by status; anything else is a
500 with a generic message, logged with its traceback server-side and never sent to the client.
"""

from __future__ import annotations

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException

from forge_sdk import errors
from forge_sdk.types import ErrorBody, ErrorResponse

__all__ = ["error_response", "exception_handlers", "validation_error"]

log = structlog.get_logger("forge_gateway.errors")

_LITESTAR_STATUS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """An OpenAI-shaped JSON error response."""
    body = ErrorResponse(ErrorBody(message=message, type=error_type, param=param, code=code))
    return Response(
        msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers or {}
    )


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> errors.InvalidRequestError:
    """A 400 from a msgspec decode failure, naming the field (``$.messages[0].role`` -> param)."""
    message = str(exc)
    param = None
    if " - at `$." in message:
        param = message.rsplit(" - at `$.", 1)[1].rstrip("`")
    if not isinstance(exc, msgspec.ValidationError):  # ValidationError subclasses DecodeError
        return errors.InvalidRequestError(f"request body is not valid JSON: {message}", code="invalid_json")
    return errors.InvalidRequestError(f"invalid request: {message}", param=param)


def _forge_handler(request: Request, exc: errors.LargeForgeAIError) -> Response[bytes]:
    if exc.status_code >= 500:
        log.warning("request_failed", error=type(exc).__name__, status=exc.status_code, message=exc.message)
    return error_response(exc.status_code, exc.message, exc.error_type, exc.code, exc.param, exc.headers)


def _http_handler(request: Request, exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    error_type, code = _LITESTAR_STATUS.get(
        status, ("internal_error" if status >= 500 else "invalid_request_error", None)
    )
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else "request failed"
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    return error_response(status, message, error_type, code, None, headers)


def _internal_handler(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("unhandled_error", path=request.url.path)
    return error_response(500, "internal server error", "internal_error", "internal_error")


exception_handlers = {
    errors.LargeForgeAIError: _forge_handler,
    HTTPException: _http_handler,
    Exception: _internal_handler,
}
