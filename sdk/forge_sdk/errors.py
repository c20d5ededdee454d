"""The one error tree of LargeForge (SDD §9.1).

Every error the platform raises on purpose derives from :class:`LargeForgeAIError`. Errors that
reach an HTTP caller carry their status, OpenAI error ``type`` and ``code`` on the class, so one
handler in the gateway maps any of them to the OpenAI error shape. Raise them; never return them,
and never parse their messages: branch on the class.

::

    LargeForgeAIError                         500 internal_error
    ├── ConfigurationError                    500 (a bad file/env/flag; CLIs print it and exit 2)
    ├── DataError                             400 invalid_request_error (bad dataset record)
    ├── TrainingError                         500
    ├── ModelError                            500 (model load / architecture problems)
    │   └── ModelNotFoundError                404 model_not_found          (also NotFoundError)
    ├── InferenceError                        500 (engine failure)
    │   ├── EngineUnavailableError            503 engine_unavailable
    │   └── UpstreamError                     502 upstream_error (a remote expert failed)
    │       └── UpstreamTimeoutError          504 upstream_timeout
    ├── RouterError                           500 (classifier / routing failure)
    │   └── ExpertUnavailableError            503 expert_unavailable
    └── APIError                              400 (errors that exist only at the HTTP edge)
        ├── InvalidRequestError               400 invalid_request_error
        │   └── ContextLengthExceededError    400 context_length_exceeded
        ├── AuthenticationError               401 invalid_api_key
        ├── PermissionDeniedError             403 permission_denied
        ├── NotFoundError                     404 not_found
        ├── PayloadTooLargeError              413 payload_too_large
        ├── RateLimitError                    429 rate_limit_exceeded
        ├── OverloadedError                   503 overloaded
        └── RequestTimeoutError               504 request_timeout
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "ContextLengthExceededError",
    "DataError",
    "EngineUnavailableError",
    "ExpertUnavailableError",
    "InferenceError",
    "InvalidRequestError",
    "LargeForgeAIError",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestBodyTimeoutError",
    "RequestTimeoutError",
    "RouterError",
    "TrainingError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class LargeForgeAIError(Exception):
    """Base exception for all LargeForge errors.

    Attributes:
        status_code: HTTP status the gateway answers with.
        error_type: OpenAI error ``type`` field.
        code: OpenAI error ``code`` field (machine-readable), or None.
        param: the request field at fault, or None.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status_code: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})


class ConfigurationError(LargeForgeAIError):
    """A configuration file, env var or flag is invalid."""


class DataError(LargeForgeAIError):
    """A dataset could not be loaded or a record is malformed."""

    status_code = 400
    error_type = "invalid_request_error"


class TrainingError(LargeForgeAIError):
    """Training failed."""


class ModelError(LargeForgeAIError):
    """A model could not be loaded, or its architecture is unsupported."""


class InferenceError(LargeForgeAIError):
    """An inference engine failed while generating."""


class EngineUnavailableError(InferenceError):
    """The engine is not running (starting, stopped or crashed)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "engine_unavailable"


class UpstreamError(InferenceError):
    """A remote OpenAI-compatible upstream failed."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """A remote upstream did not answer in time."""

    status_code = 504
    code = "upstream_timeout"


class RouterError(LargeForgeAIError):
    """Routing or classification failed."""


class ExpertUnavailableError(RouterError):
    """The chosen expert cannot serve now and no fallback could."""

    status_code = 503
    error_type = "service_unavailable"
    code = "expert_unavailable"


class APIError(LargeForgeAIError):
    """Errors that only exist at the HTTP edge."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequestError(APIError):
    """The request body or a field is invalid."""

    code = "invalid_request"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested tokens exceed the model's context."""

    code = "context_length_exceeded"


class NotFoundError(APIError):
    """A route or resource does not exist."""

    status_code = 404
    code = "not_found"


class ModelNotFoundError(ModelError, NotFoundError):
    """The requested model or expert is not served here."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class AuthenticationError(APIError):
    """No API key, or a wrong or revoked one."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """The key is valid but may not do this."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class PayloadTooLargeError(APIError):
    """The request body is larger than allowed."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(APIError):
    """The request body is not in a media type the endpoint accepts (e.g. not JSON)."""

    status_code = 415
    code = "unsupported_media_type"


class RequestBodyTimeoutError(APIError):
    """The client did not send its whole request body in time (slow upload)."""

    status_code = 408
    code = "request_body_timeout"


class RateLimitError(APIError):
    """A rate limit or concurrency limit was hit."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class OverloadedError(APIError):
    """The server is at capacity and its queue is full."""

    status_code = 503
    error_type = "service_unavailable"
    code = "overloaded"


class RequestTimeoutError(APIError):
    """The request took longer than the configured timeout."""

    status_code = 504
    error_type = "timeout_error"
    code = "request_timeout"
