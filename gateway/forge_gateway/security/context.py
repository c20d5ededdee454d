"""Per-request security state, reachable from handlers and usage listeners via a contextvar.

The ASGI middleware creates one :class:`RequestContext` per HTTP request and sets it in
:data:`current_request`; the handler (and the streaming task Litestar spawns, which inherits a
copy of the context pointing at the same object) fills in token reservations and usage.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

from forge_gateway.security.keys import ApiKey
from forge_gateway.security.ratelimit import Decision

if TYPE_CHECKING:
    from forge_gateway.config import GatewayConfig
    from forge_gateway.routing import Target

__all__ = [
    "Gatekeeper",
    "RequestContext",
    "caller_allow_list",
    "caller_is_admin",
    "caller_may_use",
    "current_request",
]


class Gatekeeper(Protocol):
    """What a request's context needs of the security layer (kept small: no import circle)."""

    config: GatewayConfig

    def authorize(self, ctx: RequestContext, target: Target) -> None:
        """Check the key's allow list admits ``target`` (see ``SecurityLayer.authorize``)."""
        ...

    async def admit(self, ctx: RequestContext, estimated_tokens: int) -> None:
        """Reserve the request's tokens (see ``SecurityLayer.admit``)."""
        ...


class RequestContext:
    """What the security layer knows about the request in flight."""

    __slots__ = (
        "admin",
        "authenticated",
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

    def __init__(self, request_id: str, key: ApiKey | None, layer: Gatekeeper) -> None:
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
        self.authenticated = False
        """A valid key was presented, or the gateway is open (no keys, dev mode)."""
        self.admin = False
        """An admin key was presented, or the gateway is open on loopback."""


current_request: ContextVar[RequestContext | None] = ContextVar("forge_request", default=None)


def caller_is_admin() -> bool:
    """Whether the request in flight may see operator details (endpoints, paths, errors)."""
    ctx = current_request.get()
    return ctx is not None and ctx.admin


def caller_allow_list() -> frozenset[str] | None:
    """The request in flight's model allow list; None when it has none (or no key: open mode)."""
    ctx = current_request.get()
    if ctx is None or ctx.key is None or ctx.key.models is None:
        return None
    return frozenset(ctx.key.models)


def caller_may_use(name: str) -> bool:
    """Whether the request in flight's key may use model/expert ``name`` (its allow list)."""
    ctx = current_request.get()
    if ctx is None or ctx.key is None:
        return ctx is not None  # open mode: everything; no security context: nothing
    return ctx.key.allows(name)
