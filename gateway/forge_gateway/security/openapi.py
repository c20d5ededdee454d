"""Make the served OpenAPI schema describe what the handlers really accept and answer.

The generation handlers decode raw bytes with msgspec (fast, precise errors), so Litestar cannot
see their body types. Once at start-up this adds each body's JSON Schema (from the same msgspec
Structs that decode it), the auth schemes, and the OpenAI-shaped error responses every route can
give. Nothing here runs per request.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

__all__ = ["describe_bodies"]

_ERRORS = {
    "400": "Invalid request",
    "401": "Missing or wrong API key",
    "403": "Key not allowed here",
    "404": "Unknown model or route",
    "413": "Request body too large",
    "429": "Rate limit reached (see Retry-After and x-ratelimit-* headers)",
    "500": "Internal error",
    "502": "Upstream expert failed",
    "503": "Overloaded or engine unavailable",
    "504": "Request timed out",
}


def _bodies() -> dict[tuple[str, str], type]:
    from forge_gateway.security.routes import CreateKeyRequest
    from forge_sdk.types import ChatCompletionRequest, CompletionRequest, GenerateRequest

    return {
        ("/v1/chat/completions", "post"): ChatCompletionRequest,
        ("/v1/completions", "post"): CompletionRequest,
        ("/generate", "post"): GenerateRequest,
        ("/admin/keys", "post"): CreateKeyRequest,
    }


def augment_schema(schema: dict[str, Any]) -> None:
    """Add request bodies, security schemes and error responses to a built schema (in place)."""
    from forge_sdk.types import ErrorResponse

    bodies = _bodies()
    types = [*bodies.values(), ErrorResponse]
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(types, refs, strict=False))
    comps = schema.setdefault("components", {})
    comps.setdefault("schemas", {}).update(components)
    comps["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "API key `lf-<id>-<secret>`"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    error_content = {"application/json": {"schema": ref_of[ErrorResponse]}}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            body_type = bodies.get((path, method))
            if body_type is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref_of[body_type]}},
                }
            if path == "/health":
                op["security"] = []
            responses = op["responses"]
            for status, text in _ERRORS.items():
                responses.setdefault(status, {"description": text, "content": error_content})
            if body_type is not None:
                for ok in ("200", "201"):
                    if ok in responses:
                        # Streaming requests answer text/event-stream; both media types are valid.
                        content = responses[ok].setdefault("content", {})
                        content.setdefault("text/event-stream", {"schema": {"type": "string"}})


def describe_bodies(app: Litestar) -> None:
    """Augment ``app``'s OpenAPI schema at start-up (built once, then cached by Litestar)."""
    if app.openapi_config is None:
        return

    def build() -> None:
        plugin = app.plugins.get(OpenAPIPlugin)
        augment_schema(plugin.provide_openapi_schema())

    app.on_startup.append(build)
