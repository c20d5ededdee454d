"""Make the served OpenAPI schema describe what the handlers really accept and answer.

The generation handlers decode raw bytes with msgspec (fast, precise errors), so Litestar cannot
see their body types. Once at start-up this adds each body's JSON Schema (from the same msgspec
Structs that decode it), the auth schemes, and the OpenAI-shaped error responses every route can
give. Nothing here runs per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

if TYPE_CHECKING:
    from forge_gateway.config import LimitsConfig

__all__ = ["describe_bodies"]

_ERRORS = {
    "400": "Invalid request",
    "401": "Missing or wrong API key",
    "403": "Key not allowed here",
    "404": "Unknown model or route",
    "408": "Request body not received in time",
    "413": "Request body too large",
    "415": "Admin request body is not application/json",
    "429": "Rate limit reached (see Retry-After and x-ratelimit-* headers)",
    "500": "Internal error",
    "502": "Upstream expert failed",
    "503": "Overloaded or engine unavailable",
    "504": "Request timed out",
}


def _bodies() -> dict[tuple[str, str], type]:
    from forge_gateway.api.keys import CreateKeyRequest
    from forge_sdk.types import ChatCompletionRequest, CompletionRequest, GenerateRequest

    return {
        ("/v1/chat/completions", "post"): ChatCompletionRequest,
        ("/v1/completions", "post"): CompletionRequest,
        ("/generate", "post"): GenerateRequest,
        ("/admin/keys", "post"): CreateKeyRequest,
    }


def _answers() -> dict[tuple[str, str], type]:
    from forge_sdk.types import ChatCompletion, Completion, GenerateResponse, ModelList, RouteDecision

    return {
        ("/v1/chat/completions", "post"): ChatCompletion,
        ("/v1/completions", "post"): Completion,
        ("/generate", "post"): GenerateResponse,
        ("/v1/models", "get"): ModelList,
        ("/route", "post"): RouteDecision,
    }


def _bound_requests(schemas: dict[str, Any], limits: LimitsConfig) -> None:
    """Write this server's limits into the request schemas, so the schema is the real contract."""
    for name in ("ChatCompletionRequest", "CompletionRequest", "GenerateRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for field in ("max_tokens", "max_completion_tokens"):
            prop = props.get(field)
            if prop is None:
                continue
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "integer":
                    option["maximum"] = limits.max_tokens
        if "messages" in props:
            for option in props["messages"].get("anyOf", [props["messages"]]):
                if option.get("type") == "array":
                    option["maxItems"] = limits.max_messages
        for option in props.get("seed", {}).get("anyOf", []):
            if option.get("type") == "integer":
                option.update(minimum=-(2**63), maximum=2**63 - 1)
        if "model" in props:
            props["model"].setdefault("examples", ["auto"])


def augment_schema(schema: dict[str, Any], limits: LimitsConfig) -> None:
    """Add request/response bodies, limits, security schemes and error responses (in place)."""
    from forge_sdk.types import ChatCompletionChunk, Completion, ErrorResponse

    # Streamed requests answer SSE whose ``data:`` events are these (then ``[DONE]``).
    chunks: dict[str, type] = {"/v1/chat/completions": ChatCompletionChunk, "/v1/completions": Completion}
    bodies, answers = _bodies(), _answers()
    types = list(dict.fromkeys([*bodies.values(), *answers.values(), *chunks.values(), ErrorResponse]))
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(types, refs, strict=True))
    _bound_requests(components, limits)
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
            for status, response in responses.items():
                if status.startswith("2"):
                    # Handlers return pre-encoded JSON bytes, which Litestar documents as a string.
                    answer = answers.get((path, method))
                    body_schema = ref_of[answer] if answer is not None else {"type": "object"}
                    response["content"] = {"application/json": {"schema": body_schema}}
                    chunk = chunks.get(path)
                    if chunk is not None:
                        # OpenAPI 3.2 style: one item per SSE event; ``data`` holds a JSON chunk
                        # (the referenced schema) or the final ``[DONE]``.
                        data = {"type": "string", "description": f"JSON {ref_of[chunk]['$ref']} or [DONE]"}
                        response["content"]["text/event-stream"] = {
                            "itemSchema": {
                                "type": "object",
                                "required": ["data"],
                                "properties": {"data": data},
                            }
                        }
            for status, text in _ERRORS.items():
                # Every error, Litestar's own included, leaves in the OpenAI shape (errors.py).
                responses[status] = {"description": text, "content": error_content}


def describe_bodies(app: Litestar, limits: LimitsConfig) -> None:
    """Augment ``app``'s OpenAPI schema at start-up (built once, then cached by Litestar)."""
    if app.openapi_config is None:
        return

    def build() -> None:
        plugin = app.plugins.get(OpenAPIPlugin)
        augment_schema(plugin.provide_openapi_schema(), limits)

    app.on_startup.append(build)
