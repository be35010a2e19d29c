"""The shop's side of the OpenAPI document: the catalog as shoppers list it, and the
admin API (/api/admin/), the shop's backend's routes behind the `adminToken` bearer
scheme."""

from __future__ import annotations

from typing import Any

from .admin import MAX_LIMIT, ORDER_STATUSES
from .openapi_parts import (
    BODY_ERRORS,
    MUTATION_ERRORS,
    PRODUCT_ID,
    RETRY_AFTER,
    error,
    json_of,
    ref,
    request_body,
)

LISTING_PARAMETERS = [
    {
        "name": "ids",
        "in": "query",
        "required": False,
        "description": "Comma-separated product ids (1 to 100): just these, in this order.",
        "schema": {"type": "string"},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "A page of this many (1 to 1000; 100 with only `after`).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The page after this product id (the previous page's `next`).",
        "schema": {"type": "string"},
    },
    {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "The ETag held: 304 while the answer is the same.",
        "schema": {"type": "string"},
    },
]


ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
ADMIN_ERRORS = {
    "401": error(
        "`unauthorized`: no `Authorization: Bearer <ADMIN_TOKEN>`, or another token.",
        {"WWW-Authenticate": {"description": "`Bearer …`", "schema": {"type": "string"}}},
    ),
    "404": error("`not_found`: the admin API is off (ADMIN_TOKEN unset)."),
    "429": error(
        "`rate_limited`: too many wrong tokens from this address; `retry_after`.",
        RETRY_AFTER,
    ),
    "503": MUTATION_ERRORS["503"],
}
ADMIN_PRODUCT_ID = {
    **PRODUCT_ID,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^/\\s]+$"},
}


ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _admin(name: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": name,
        "summary": summary,
        "tags": ["admin"],
        "security": ADMIN_SECURITY,
        **extra,
        "responses": {**ADMIN_ERRORS, **responses},
    }


def shop_paths() -> dict[str, Any]:
    return {**_catalog(), **_admin_products(), **_admin_orders()}


def _catalog() -> dict[str, Any]:
    return {
        "/api/products": {
            "get": {
                "operationId": "listProducts",
                "summary": "The catalog (archived products left out): whole, by ids, or paged.",
                "tags": ["catalog"],
                "parameters": LISTING_PARAMETERS,
                "responses": {
                    "200": json_of(
                        ref("Products"),
                        "Every product, the ones named, or a page in id order with `next`"
                        " (gzip when large and accepted).",
                        {"ETag": {"description": "Of this answer.", "schema": {"type": "string"}}},
                    ),
                    "304": {"description": "Still what If-None-Match names."},
                    "422": error("`invalid_request`: a bad `ids`, `limit` or `after`."),
                },
            }
        },
    }


def _admin_products() -> dict[str, Any]:
    product = json_of(ref("AdminProduct"), "The product as stored now.")
    bad_product = error("`invalid_request`: a body of the wrong shape, or a SKU taken.")
    return {
        "/api/admin/products": {
            "post": _admin(
                "upsertProducts",
                "Create or replace many products in one transaction, all or none.",
                {
                    "200": json_of(ref("BulkResult"), "How many were new, how many replaced."),
                    **BODY_ERRORS,
                    "422": error("`invalid_request`; `index` names the first bad row."),
                },
                requestBody=request_body("BulkBody"),
            )
        },
        "/api/admin/products/{product_id}": {
            "put": _admin(
                "putProduct",
                "Create or replace one product.",
                {"200": product, **BODY_ERRORS, "422": bad_product},
                parameters=[ADMIN_PRODUCT_ID],
                requestBody=request_body("ProductBody"),
            ),
            "patch": _admin(
                "patchProduct",
                "Change some fields of a product; `stock_delta` moves its stock atomically.",
                {
                    "200": product,
                    **BODY_ERRORS,
                    "404": error("`unknown_product`, or `not_found` (the admin API is off)."),
                    "409": error("`insufficient_stock`: the stock would go below 0; `available`."),
                    "422": error("`invalid_request`: nothing to change, or a bad field."),
                },
                parameters=[ADMIN_PRODUCT_ID],
                requestBody=request_body("ProductPatch"),
            ),
        },
    }


def _admin_orders() -> dict[str, Any]:
    return {
        "/api/admin/orders": {
            "get": _admin(
                "listOrders",
                "Orders, newest first, a page at a time.",
                {
                    "200": json_of(ref("OrderPage"), "A page; `next` is the next `after`."),
                    "422": error("`invalid_request`: a bad `status`, `limit` or `after`."),
                },
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(ORDER_STATUSES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Default 50.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "The `next` of the previous page.",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/admin/orders/{order_id}": {
            "get": _admin(
                "getOrder",
                "One order.",
                {
                    "200": json_of(ref("OrderDoc"), "The order."),
                    "404": error("`unknown_order`, or `not_found` (the admin API is off)."),
                },
                parameters=[ORDER_ID],
            )
        },
    }
