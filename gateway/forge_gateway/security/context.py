"""Per-request security state, reachable from handlers and usage listeners via a contextvar.

The ASGI middleware creates one :class:`RequestContext` per HTTP request and sets it in
:data:`current_request`; the handler (and the streaming task Litestar spawns, which inherits a
copy of the context pointing at the same object) fills in token reservations and usage.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from forge_gateway.security.keys import ApiKey
from forge_gateway.security.ratelimit import Decision

if TYPE_CHECKING:
    from forge_gateway.security.layer import SecurityLayer

__all__ = ["RequestContext", "current_request"]


class RequestContext:
    """What the security layer knows about the request in flight."""

    __slots__ = (
        "completion_tokens",
        "expert",
        "key",
        "layer",
        "prompt_tokens",
        "request_id",
        "requests_decision",
        "reserved_tokens",
        "tokens_decision",
        "usage_seen",
    )

    def __init__(self, request_id: str, key: ApiKey | None, layer: SecurityLayer) -> None:
        self.request_id = request_id
        self.key = key
        self.layer = layer
        self.requests_decision: Decision | None = None
        self.tokens_decision: Decision | None = None
        self.reserved_tokens = 0
        """Tokens charged to the TPM limit before generation (estimate)."""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usage_seen = False
        """Whether the handler reported actual usage (then reservations are reconciled to it)."""
        self.expert = ""


current_request: ContextVar[RequestContext | None] = ContextVar("forge_request", default=None)
