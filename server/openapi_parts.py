"""The pieces the OpenAPI document's paths are built from: the error shape, the headers
and parameters the routes share, and the responses every change can give."""

from __future__ import annotations

from typing import Any

from .protocol import MAX_QUANTITY


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "message": {"type": "string", "minLength": 1},
            },
            "additionalProperties": True,  # details: available, max_quantity, version, cart, …
        }
    },
}

# --- headers ---------------------------------------------------------------------------

_TOKEN = "^[\\x21-\\x7e]{1,255}$"
CART_ID_IN = {
    "name": "X-Cart-Id",
    "in": "header",
    "required": False,
    "description": "The signed cart id, for clients without cookies (the `cart_id` cookie "
    "does the same). Missing, tampered or foreign: a fresh cart is issued.",
    "schema": {"type": "string"},
}
CART_COOKIE = {
    "name": "cart_id",
    "in": "cookie",
    "required": False,
    "description": "The signed cart id (HttpOnly; SameSite=Lax).",
    "schema": {"type": "string"},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A repeat with the same key for the same cart returns the first answer "
    "and changes nothing (remembered for IDEMPOTENCY_TTL). Malformed: 422.",
    "schema": {"type": "string", "pattern": _TOKEN},
}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Apply only at this version: `"7"`, `W/"7"`, `7` or `*`; otherwise 412 '
    "with the current cart.",
    "schema": {"type": "string", "pattern": '^\\s*(\\*|(W/)?"?[0-9]{1,18}"?)\\s*$'},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": 'The ETag the client holds: `"7"` answers 304 while the cart is at 7.',
    "schema": {"type": "string"},
}
ORIGIN = {
    "name": "Origin",
    "in": "header",
    "required": False,
    "description": "Sent by browsers. A state change from an origin other than the "
    "server's own or ALLOWED_ORIGINS is refused (403 forbidden_origin).",
    "schema": {"type": "string"},
}
PRODUCT_ID = {
    "name": "product_id",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[^/]+$",
        "examples": ["p-001"],
    },
}

CART_HEADERS = {
    "X-Cart-Id": {"description": "The signed cart id.", "schema": {"type": "string"}},
    "ETag": {"description": 'The cart version, `"<version>"`.', "schema": {"type": "string"}},
    "Set-Cookie": {
        "description": "`cart_id=<signed id>; HttpOnly; Path=/; Max-Age=2592000; "
        "SameSite=Lax` (plus `Secure` over https); for a page on another site over https "
        "(`Sec-Fetch-Site: cross-site`): `SameSite=None; Secure; Partitioned`.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` on the answer to a repeated Idempotency-Key: nothing was"
        " applied now.",
        "schema": {"type": "string"},
    },
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}

# --- responses -------------------------------------------------------------------------


def json_of(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> Any:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def error(description: str, headers: dict[str, Any] | None = None) -> Any:
    return json_of(ref("Error"), description, headers)


CART_OK = json_of(ref("CartDoc"), "The cart document.", CART_HEADERS)
MUTATION_ERRORS = {
    "403": error("`forbidden_origin`: a browser on another site."),
    "409": error(
        "`insufficient_stock` (`available`), `cart_locked`, `too_many_lines` "
        f"(`max_lines`: 100), `quantity_limit` (`max_quantity`: {MAX_QUANTITY})."
    ),
    "412": error("`version_conflict`: If-Match names an old version; `version`, `cart`."),
    "422": error(
        "`invalid_request`: a malformed Idempotency-Key, or a body of the wrong shape;"
        " `idempotency_key_reused`: the key was used for another request of this cart."
    ),  # fmt: skip
    "429": error(
        "`rate_limited`: over the mutations per second of this cart, or over the new carts"
        " per second of this address (a request naming no cart); `retry_after`.",
        RETRY_AFTER,
    ),
    "503": error("`unavailable`: the store could not commit; nothing changed, retry."),
}
BODY_ERRORS = {
    "400": error("`invalid_json`: the body is not JSON."),
    "413": error("`payload_too_large`: over MAX_BODY_BYTES (16 KiB); `limit`."),
}


def request_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def mutation(
    name: str, summary: str, body: str | None, *extra: dict[str, Any], **errors: Any
) -> Any:
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": summary,
        "tags": ["cart"],
        "parameters": [*extra, CART_ID_IN, CART_COOKIE, IDEMPOTENCY_KEY, IF_MATCH, ORIGIN],
        "responses": {"200": CART_OK, **MUTATION_ERRORS, **(BODY_ERRORS if body else {})},
    }
    operation["responses"].update(errors)
    if body is not None:
        operation["requestBody"] = request_body(body)
    return operation


def with_line_links(operation: dict[str, Any]) -> dict[str, Any]:
    """Links from an add to what can be done with the line it made, in the same cart."""
    same_line = {
        "product_id": "$request.body#/product_id",
        "X-Cart-Id": "$response.header.X-Cart-Id",
    }
    ok = dict(operation["responses"]["200"])
    ok["links"] = {
        "SetQuantity": {"operationId": "setQuantity", "parameters": same_line},
        "RemoveItem": {"operationId": "removeItem", "parameters": same_line},
    }
    operation["responses"] = {**operation["responses"], "200": ok}
    return operation


def checkout_step(name: str, summary: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name,
            "summary": summary,
            "tags": ["checkout"],
            "parameters": [CART_ID_IN, CART_COOKIE, ORIGIN],
            "responses": {
                "200": CART_OK,
                "403": MUTATION_ERRORS["403"],
                "409": error(conflict),
                "429": MUTATION_ERRORS["429"],
                "502": error("`payment_provider_error`: the provider did not answer."),
                "503": MUTATION_ERRORS["503"],
            },
        }
    }
