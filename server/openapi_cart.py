"""The shopper's REST API in the OpenAPI document: the cart and its lines, the long-poll,
checkout, and signing in."""

from __future__ import annotations

from typing import Any

from .openapi_parts import (
    BODY_ERRORS,
    CART_COOKIE,
    CART_HEADERS,
    CART_ID_IN,
    CART_OK,
    IF_MATCH,
    IF_NONE_MATCH,
    MUTATION_ERRORS,
    ORIGIN,
    PRODUCT_ID,
    RETRY_AFTER,
    checkout_step,
    error,
    json_of,
    mutation,
    ref,
    request_body,
    with_line_links,
)


def cart_paths() -> dict[str, Any]:
    return {**_cart(), **_checkout(), **_users()}


def _cart() -> dict[str, Any]:
    not_in_cart = error("`not_in_cart`: the cart has no line for this product.")
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
            "post": with_line_links(
                mutation(
                    "addItem",
                    "Add to a line (creating it).",
                    "AddItemBody",
                    **{"404": error("`unknown_product`.")},
                )
            ),
            "delete": mutation("clearCart", "Empty the cart.", None),
        },
        "/api/cart/items/{product_id}": {
            "patch": mutation(
                "setQuantity",
                "Set a line's quantity (0 removes it).",
                "SetQuantityBody",
                PRODUCT_ID,
                **{"404": not_in_cart},
            ),
            "delete": mutation(
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
                    "200": json_of(
                        {"oneOf": [ref("Changes"), ref("Snapshot")]},
                        "The patches after `since` (none if nothing happened within `wait`),"
                        " or a snapshot when `since` is missing or too old.",
                        CART_HEADERS,
                    ),
                    "422": error("`invalid_request`: `since` or `wait` is not a number."),
                    "429": error(
                        "`too_many_connections`: this address holds MAX_CONNECTIONS_PER_IP.",
                        RETRY_AFTER,
                    ),
                },
            }
        },
    }


def _checkout() -> dict[str, Any]:
    return {
        "/api/cart/checkout": {
            "post": {
                "operationId": "startCheckout",
                "summary": "Start a checkout: reserve the stock, cart → checking_out.",
                "tags": ["checkout"],
                "parameters": [CART_ID_IN, CART_COOKIE, IF_MATCH, ORIGIN],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("EmptyBody")}},
                },
                "responses": {
                    "200": json_of(
                        ref("Started"),
                        "Where to send the shopper.",
                        {k: v for k, v in CART_HEADERS.items() if k != "ETag"},
                    ),
                    **BODY_ERRORS,
                    "403": MUTATION_ERRORS["403"],
                    "409": error(
                        "`empty_cart`, `insufficient_stock` (lists the lines), `cart_locked`."
                    ),
                    "412": MUTATION_ERRORS["412"],
                    "422": error("`invalid_request`: a body of the wrong shape."),
                    "429": error(
                        "`rate_limited` (as for any change), or `too_many_checkouts`: this"
                        " address holds MAX_CHECKOUTS_PER_IP checkouts already.",
                        RETRY_AFTER,
                    ),
                    "502": error("`payment_provider_error`: the provider did not answer."),
                    "503": error(
                        "`unavailable`: the store could not commit; `payments_unavailable`:"
                        " no payment provider is configured."
                    ),
                },
            }
        },
        "/api/cart/checkout/cancel": checkout_step(
            "cancelCheckout",
            "Cancel a checkout: the reservation is released, cart → active.",
            "`checkout_completed`: the payment went through; `cart_locked`.",
        ),
        "/api/cart/checkout/confirm": checkout_step(
            "confirmCheckout",
            "Back from the payment page: settle now if the provider says paid.",
            "`cart_locked`: not checking out.",
        ),
    }


def _users() -> dict[str, Any]:
    return {
        "/api/cart/login": {
            "post": {
                "operationId": "login",
                "summary": "Attach the cart to a user (signed token); merge with theirs.",
                "tags": ["users"],
                "parameters": [CART_ID_IN, CART_COOKIE, ORIGIN],
                "requestBody": request_body("LoginBody"),
                "responses": {
                    "200": CART_OK,
                    **BODY_ERRORS,
                    "401": error("`invalid_token`: missing, malformed, forged or expired."),
                    "403": MUTATION_ERRORS["403"],
                    "409": error("`cart_locked`: one of the carts is checking out."),
                    "422": error("`invalid_request`: a body of the wrong shape."),
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
                "requestBody": request_body("DemoLoginBody"),
                "responses": {
                    "200": json_of(ref("DemoToken"), "A token for `demo:<user>`."),
                    **BODY_ERRORS,
                    "403": MUTATION_ERRORS["403"],
                    "404": error("`not_found`: the demo login is off."),
                    "422": error("`invalid_request`: a body of the wrong shape."),
                },
            }
        },
    }
