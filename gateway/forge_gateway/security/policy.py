"""The one authority over request paths: which route a request is for, and what it demands.

Litestar routes on a normalised path (root path removed, slashes merged, no trailing slash). A
security decision taken on the raw ASGI path is a second source of truth that path tricks
(``//admin``, a trailing slash, a ``root_path``) can pull apart from the router's. So the
security middleware asks the router itself which handler a request will reach, and reads that
handler's ``opt`` metadata:

- ``forge_scope``: ``public`` (no key), ``key`` (any valid key, the default), ``admin`` (an
  admin key), or ``metrics`` (public or admin, per ``auth.public_metrics``);
- ``forge_generation``: the request generates tokens (body read first, then a concurrency slot);
- ``forge_upstream``: the upstream path a remote expert serves it at (the raw-ASGI fast path).

Handlers declare these with :data:`PUBLIC`, :data:`ADMIN` and :func:`generation`. The
:func:`route_guard` (an app-wide Litestar guard) checks the same scope again on the handler
Litestar actually matched, so even a disagreement between the two lookups fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from litestar.exceptions import HTTPException
from litestar.utils import normalize_path

from forge_gateway.security.context import current_request
from forge_sdk.errors import AuthenticationError, PermissionDeniedError

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler

__all__ = [
    "ADMIN",
    "POLICY_SCOPE_KEY",
    "PUBLIC",
    "RouteAuthority",
    "RoutePolicy",
    "Scope",
    "generation",
    "route_guard",
]

Scope = Literal["public", "key", "admin"]

PUBLIC: dict[str, Any] = {"forge_scope": "public"}
"""Handler ``opt`` of a route anyone may call (``/health``)."""
ADMIN: dict[str, Any] = {"forge_scope": "admin"}
"""Handler ``opt`` of a route that needs an admin key."""
METRICS: dict[str, Any] = {"forge_scope": "metrics"}
"""Handler ``opt`` of ``/metrics``: public or admin per ``auth.public_metrics``."""
POLICY_SCOPE_KEY = "forge.policy"
"""ASGI scope key where the security middleware leaves the request's :class:`RoutePolicy`."""


def generation(upstream_path: str | None = None) -> dict[str, Any]:
    """Handler ``opt`` of a generation route (optionally proxied by the remote fast path)."""
    return {"forge_generation": True, "forge_upstream": upstream_path}


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What one matched route demands of a request."""

    scope: Scope
    """Who may call it."""
    generation: bool = False
    """Whether it generates (body read with a deadline, then a concurrency slot)."""
    upstream_path: str | None = None
    """Path below a remote expert's endpoint for the fast path (``chat/completions``)."""
    template: str | None = None
    """The matched route's path template (metrics label); None for an unknown route."""


_UNMATCHED = RoutePolicy("key")
"""Unknown paths need a key too: an anonymous caller learns nothing about which routes exist."""


class RouteAuthority:
    """Resolves requests to their route with the app's own router and caches each route's policy.

    Args:
        app: the Litestar app (its routes are final).
        public_metrics: whether ``/metrics`` is public.
    """

    def __init__(self, app: Litestar, *, public_metrics: bool) -> None:
        self._router = app.asgi_router
        self._public_metrics = public_metrics
        self._policies: dict[int, RoutePolicy] = {}

    def decide(self, scope: Any) -> RoutePolicy:
        """The policy of the route ``scope`` reaches, computed on the router's normalised path."""
        path: str = scope["path"]
        # Exactly the steps of Litestar's ASGIRouter.__call__ before it routes.
        if root_path := scope.get("root_path", ""):
            path = path.split(root_path, maxsplit=1)[-1]
        try:
            _, handler, _, _, template = self._router.handle_routing(normalize_path(path), scope["method"])
        except HTTPException:  # 404, 405, bad path params: the router will refuse it too
            return _UNMATCHED
        policy = self._policies.get(id(handler))
        if policy is None:
            policy = self._policies[id(handler)] = self._policy(handler.opt, template)
        return policy

    def _policy(self, opt: dict[str, Any], template: str) -> RoutePolicy:
        scope = opt.get("forge_scope", "key")
        if scope == "metrics":
            scope = "public" if self._public_metrics else "admin"
        if scope not in ("public", "key", "admin"):
            raise ValueError(f"unknown forge_scope {scope!r} on route {template}")
        return RoutePolicy(
            scope,
            generation=bool(opt.get("forge_generation")),
            upstream_path=opt.get("forge_upstream"),
            template=template,
        )


def route_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-wide guard: the handler Litestar matched gets the scope its ``opt`` demands.

    The middleware has already refused whatever its own lookup refused; this is the same rule on
    the handler that actually runs, and it fails closed on a request the middleware never saw.

    Raises:
        AuthenticationError: a key is needed and none was verified.
        PermissionDeniedError: an admin key is needed.
    """
    scope = handler.opt.get("forge_scope", "key")
    ctx = current_request.get()
    if ctx is None:
        raise PermissionDeniedError("request did not pass the gateway's security layer")
    if scope == "public" or (scope == "metrics" and ctx.layer.config.auth.public_metrics):
        return
    if not ctx.authenticated:
        raise AuthenticationError("You didn't provide an API key.")
    if scope != "key" and not ctx.admin:
        raise PermissionDeniedError("this endpoint needs an admin API key")
