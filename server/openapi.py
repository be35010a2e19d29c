"""The REST API of docs/PROTOCOL.md as an OpenAPI 3.1 document, served at /openapi.json.

Bodies are the msgspec Structs the server itself decodes and encodes (their JSON schema
comes from msgspec), so the document cannot drift from the wire types; the paths, headers
and error statuses are written out here. The WebSocket is described in docs/PROTOCOL.md only:
OpenAPI has no way to say it."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from .admin import AdminProduct, BulkBody, BulkResult, OrderPage, ProductBody, ProductPatch
from .checkout import Started
from .protocol import (
    MAX_QUANTITY,
    AddItemBody,
    CartDoc,
    DemoLoginBody,
    EmptyBody,
    LoginBody,
    PatchMsg,
    ProductDoc,
    SetQuantityBody,
)

# --- shapes that only this document names ----------------------------------------------


class Products(Struct):
    products: list[ProductDoc]
    next: str | None = None  # paged (?limit=, ?after=) only: the next page's `after`


class Changes(Struct):
    version: int
    patches: list[PatchMsg]


class Snapshot(Struct):
    snapshot: CartDoc


class DemoToken(Struct):
    token: str
    user_id: str


class Health(Struct):
    status: str
    reason: str | None = None


_STRUCTS = [Products, CartDoc, AddItemBody, SetQuantityBody, Changes, Snapshot]
_STRUCTS += [Started, EmptyBody, LoginBody, DemoLoginBody, DemoToken, Health]
_STRUCTS += [ProductBody, ProductPatch, BulkBody, AdminProduct, BulkResult, OrderPage]


def _ref(name: str) -> dict[str, str]:
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

_CART_HEADERS = {
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
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}

# --- responses -------------------------------------------------------------------------


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> Any:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> Any:
    return _json(_ref("Error"), description, headers)


CART_OK = _json(_ref("CartDoc"), "The cart document.", _CART_HEADERS)
MUTATION_ERRORS = {
    "403": _error("`forbidden_origin`: a browser on another site."),
    "409": _error(
        "`insufficient_stock` (`available`), `cart_locked`, `too_many_lines` "
        f"(`max_lines`: 100), `quantity_limit` (`max_quantity`: {MAX_QUANTITY})."
    ),
    "412": _error("`version_conflict`: If-Match names an old version; `version`, `cart`."),
    "422": _error(
        "`invalid_request`: a malformed Idempotency-Key, or a body of the wrong shape;"
        " `idempotency_key_reused`: the key was used for another request of this cart."
    ),  # fmt: skip
    "429": _error(
        "`rate_limited`: over the mutations per second of this cart, or over the new carts"
        " per second of this address (a request naming no cart); `retry_after`.",
        _RETRY_AFTER,
    ),
    "503": _error("`unavailable`: the store could not commit; nothing changed, retry."),
}
BODY_ERRORS = {
    "400": _error("`invalid_json`: the body is not JSON."),
    "413": _error("`payload_too_large`: over MAX_BODY_BYTES (16 KiB); `limit`."),
}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _mutation(
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
        operation["requestBody"] = _body(body)
    return operation


def _added(operation: dict[str, Any]) -> dict[str, Any]:
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


def _checkout_step(name: str, summary: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name,
            "summary": summary,
            "tags": ["checkout"],
            "parameters": [CART_ID_IN, CART_COOKIE, ORIGIN],
            "responses": {
                "200": CART_OK,
                "403": MUTATION_ERRORS["403"],
                "409": _error(conflict),
                "429": MUTATION_ERRORS["429"],
                "502": _error("`payment_provider_error`: the provider did not answer."),
                "503": MUTATION_ERRORS["503"],
            },
        }
    }


def _paths() -> dict[str, Any]:
    not_in_cart = _error("`not_in_cart`: the cart has no line for this product.")
    return {
        "/api/cart": {
            "get": {
                "operationId": "getCart",
                "summary": "The cart.",
                "tags": ["cart"],
                "parameters": [CART_ID_IN, CART_COOKIE, IF_NONE_MATCH],
                "responses": {
                    "200": CART_OK,
                    "304": {"description": "Still at the version If-None-Match names."},
                    "429": MUTATION_ERRORS["429"],
                },
            }
        },
        "/api/cart/items": {
            "post": _added(
                _mutation(
                    "addItem",
                    "Add to a line (creating it).",
                    "AddItemBody",
                    **{"404": _error("`unknown_product`.")},
                )
            ),
            "delete": _mutation("clearCart", "Empty the cart.", None),
        },
        "/api/cart/items/{product_id}": {
            "patch": _mutation(
                "setQuantity",
                "Set a line's quantity (0 removes it).",
                "SetQuantityBody",
                PRODUCT_ID,
                **{"404": not_in_cart},
            ),
            "delete": _mutation(
                "removeItem", "Remove a line.", None, PRODUCT_ID, **{"404": not_in_cart}
            ),
        },
        "/api/cart/changes": {
            "get": {
                "operationId": "cartChanges",
                "summary": "Long-poll for the patches after a version.",
                "tags": ["cart"],
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Without it, a snapshot at once.",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "Seconds to wait for a change (default 25, capped at "
                        "LONG_POLL_MAX, 25).",
                        "schema": {"type": "number", "minimum": 0},
                    },
                    CART_ID_IN,
                    CART_COOKIE,
                ],
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("Changes"), _ref("Snapshot")]},
                        "The patches after `since` (none if nothing happened within `wait`),"
                        " or a snapshot when `since` is missing or too old.",
                        _CART_HEADERS,
                    ),
                    "422": _error("`invalid_request`: `since` or `wait` is not a number."),
                    "429": _error(
                        "`too_many_connections`: this address holds MAX_CONNECTIONS_PER_IP.",
                        _RETRY_AFTER,
                    ),
                },
            }
        },
        "/api/cart/checkout": {
            "post": {
                "operationId": "startCheckout",
                "summary": "Start a checkout: reserve the stock, cart → checking_out.",
                "tags": ["checkout"],
                "parameters": [CART_ID_IN, CART_COOKIE, IF_MATCH, ORIGIN],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("EmptyBody")}},
                },
                "responses": {
                    "200": _json(
                        _ref("Started"),
                        "Where to send the shopper.",
                        {k: v for k, v in _CART_HEADERS.items() if k != "ETag"},
                    ),
                    **BODY_ERRORS,
                    "403": MUTATION_ERRORS["403"],
                    "409": _error(
                        "`empty_cart`, `insufficient_stock` (lists the lines), `cart_locked`."
                    ),
                    "412": MUTATION_ERRORS["412"],
                    "422": _error("`invalid_request`: a body of the wrong shape."),
                    "429": _error(
                        "`rate_limited` (as for any change), or `too_many_checkouts`: this"
                        " address holds MAX_CHECKOUTS_PER_IP checkouts already.",
                        _RETRY_AFTER,
                    ),
                    "502": _error("`payment_provider_error`: the provider did not answer."),
                    "503": _error(
                        "`unavailable`: the store could not commit; `payments_unavailable`:"
                        " no payment provider is configured."
                    ),
                },
            }
        },
        "/api/cart/checkout/cancel": _checkout_step(
            "cancelCheckout",
            "Cancel a checkout: the reservation is released, cart → active.",
            "`checkout_completed`: the payment went through; `cart_locked`.",
        ),
        "/api/cart/checkout/confirm": _checkout_step(
            "confirmCheckout",
            "Back from the payment page: settle now if the provider says paid.",
            "`cart_locked`: not checking out.",
        ),
        "/api/cart/login": {
            "post": {
                "operationId": "login",
                "summary": "Attach the cart to a user (signed token); merge with theirs.",
                "tags": ["users"],
                "parameters": [CART_ID_IN, CART_COOKIE, ORIGIN],
                "requestBody": _body("LoginBody"),
                "responses": {
                    "200": CART_OK,
                    **BODY_ERRORS,
                    "401": _error("`invalid_token`: missing, malformed, forged or expired."),
                    "403": MUTATION_ERRORS["403"],
                    "409": _error("`cart_locked`: one of the carts is checking out."),
                    "422": _error("`invalid_request`: a body of the wrong shape."),
                    "429": MUTATION_ERRORS["429"],
                    "503": MUTATION_ERRORS["503"],
                },
            }
        },
        "/api/demo/login": {
            "post": {
                "operationId": "demoLogin",
                "summary": "DEMO_LOGIN=1 only: a user token for any name (the demo page).",
                "tags": ["users"],
                "parameters": [ORIGIN],
                "requestBody": _body("DemoLoginBody"),
                "responses": {
                    "200": _json(_ref("DemoToken"), "A token for `demo:<user>`."),
                    **BODY_ERRORS,
                    "403": MUTATION_ERRORS["403"],
                    "404": _error("`not_found`: the demo login is off."),
                    "422": _error("`invalid_request`: a body of the wrong shape."),
                },
            }
        },
        "/api/webhooks/stripe": {
            "post": {
                "operationId": "stripeWebhook",
                "summary": "Stripe events (checkout.session.completed, …).",
                "tags": ["checkout"],
                "parameters": [
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"received": {"const": True}}},
                        "Received (also for events it ignores).",
                    ),
                    "400": _error("`bad_signature`: missing, forged or older than 5 minutes."),
                    "409": _error("The event cannot settle its checkout."),
                    "413": _error("`payload_too_large`."),
                    "503": MUTATION_ERRORS["503"],
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness.",
                "tags": ["operations"],
                "responses": {"200": _json(_ref("Health"), '`{"status": "ok"}`')},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store answers.",
                "tags": ["operations"],
                "responses": {
                    "200": _json(_ref("Health"), '`{"status": "ready"}`'),
                    "503": _json(_ref("Health"), "`unavailable`, with the `reason`."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Counters, gauges, histograms.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error(
                        "`unauthorized`: METRICS_TOKEN is set and no `Authorization: Bearer`"
                        " with it was sent."
                    ),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    from .openapi_shop import shop_paths  # it builds on the shapes above

    _, components = msgspec.json.schema_components(
        _STRUCTS, ref_template="#/components/schemas/{name}"
    )
    components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cart sync",
            "version": "1",
            "description": "Real-time shopping carts: the REST half of docs/PROTOCOL.md. Every "
            "error has the `Error` shape. The WebSocket (`GET /api/cart/ws`) is described in "
            "docs/PROTOCOL.md in the repository.",
        },
        "paths": {**shop_paths(), **_paths()},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN: the admin API (`/api/admin/`) only.",
                }
            },
        },
    }


def encoded() -> bytes:
    return msgspec.json.encode(document())
