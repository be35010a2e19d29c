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
from .openapi_cart import cart_paths
from .openapi_parts import ERROR_SCHEMA, MUTATION_ERRORS, error, json_of, ref
from .openapi_shop import shop_paths
from .protocol import (
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


def _operations() -> dict[str, Any]:
    """The Stripe webhook, health, readiness and metrics."""
    return {
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
                    "200": json_of(
                        {"type": "object", "properties": {"received": {"const": True}}},
                        "Received (also for events it ignores).",
                    ),
                    "400": error("`bad_signature`: missing, forged or older than 5 minutes."),
                    "409": error("The event cannot settle its checkout."),
                    "413": error("`payload_too_large`."),
                    "503": MUTATION_ERRORS["503"],
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness.",
                "tags": ["operations"],
                "responses": {"200": json_of(ref("Health"), '`{"status": "ok"}`')},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store answers.",
                "tags": ["operations"],
                "responses": {
                    "200": json_of(ref("Health"), '`{"status": "ready"}`'),
                    "503": json_of(ref("Health"), "`unavailable`, with the `reason`."),
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
                    "401": error(
                        "`unauthorized`: METRICS_TOKEN is set and no `Authorization: Bearer`"
                        " with it was sent."
                    ),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
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
        "paths": {**shop_paths(), **cart_paths(), **_operations()},
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
