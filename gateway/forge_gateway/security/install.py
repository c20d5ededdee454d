"""Wire the security layer into a Litestar app: the one call ``create_app`` makes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forge_gateway.security.layer import SecurityLayer, ServedGateway
from forge_gateway.security.middleware import SecurityMiddleware
from forge_gateway.security.policy import RouteAuthority, route_guard
from forge_sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ["install_security"]


def install_security(app: Litestar, gateway: ServedGateway) -> SecurityLayer:
    """Add the security middleware, the route authority and the lifecycle hooks.

    ``app`` must have been built with :func:`~forge_gateway.security.policy.route_guard` among
    its guards; every route is registered before the route authority is built.
    """
    if route_guard not in app.guards:
        raise ConfigurationError("the app needs forge_gateway.security.policy.route_guard among its guards")
    layer = SecurityLayer(gateway.config, gateway)
    app.state.security = layer
    app.on_startup.append(layer.start)
    app.on_shutdown.append(layer.stop)
    layer.authority = RouteAuthority(app, public_metrics=gateway.config.auth.public_metrics)
    app.asgi_handler = SecurityMiddleware(app.asgi_handler, layer)
    return layer
