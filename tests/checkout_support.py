"""Helpers shared by the checkout tests: carts with chosen lines, catalog imports, and
reading the server's SQLite file directly (the truth behind what the API says)."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support import ServerProcess, rest, test_catalog


def product(
    pid: str, stock: int, price_cents: int = 1000, name: str | None = None
) -> dict[str, Any]:
    return {
        "id": pid,
        "sku": f"SKU-{pid.upper()}",
        "name": name or f"Item {pid}",
        "price_cents": price_cents,
        "stock": stock,
    }


def server_with(
    workdir: Path, env: dict[str, str] | None = None, extra: Sequence[dict[str, Any]] = ()
) -> ServerProcess:
    """A server (not started) whose catalog is the test catalog plus `extra`, imported
    in one run of the CLI."""
    proc = ServerProcess(workdir, {"DEMO_CATALOG": "0", **(env or {})}, catalog=False)
    import_products(proc, test_catalog() + list(extra), "catalog")
    return proc


def import_products(server: ServerProcess, products: list[dict[str, Any]], name: str) -> None:
    """`python -m server import` of extra products (before start, or while it runs)."""
    path = server.workdir / f"{name}.json"
    path.write_text(json.dumps(products))
    done = server.cli("import", str(path))
    assert done.returncode == 0, done.stderr


def rows(server: ServerProcess | Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    path = server.db if isinstance(server, ServerProcess) else server
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def stock(server: ServerProcess, pid: str) -> int:
    found: int = rows(server, "SELECT stock FROM products WHERE id = ?", (pid,))[0][0]
    return found


def orders_of(server: ServerProcess, cart_id: str) -> list[dict[str, Any]]:
    found = rows(
        server,
        "SELECT id, checkout_id, session_id, payment_intent, amount_total_cents, currency, status"
        " FROM orders WHERE cart_id = ? ORDER BY created_at",
        (cart_id,),
    )
    keys = ("id", "checkout_id", "session_id", "payment_intent", "amount_total_cents")
    return [dict(zip((*keys, "currency", "status"), row, strict=True)) for row in found]


def order_lines(server: ServerProcess, order_id: str) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in rows(
            server,
            "SELECT product_id, sku, name, quantity, unit_price_cents, line_total_cents"
            " FROM order_items WHERE order_id = ? ORDER BY product_id",
            (order_id,),
        )
    ]


def checkouts_of(server: ServerProcess, cart_id: str) -> list[tuple[str, str, str | None]]:
    """(id, status, session_id) of the cart's checkouts, oldest first."""
    return [
        tuple(row)
        for row in rows(
            server,
            "SELECT id, status, session_id FROM checkouts WHERE cart_id = ? ORDER BY rowid",
            (cart_id,),
        )
    ]


async def cart_with(
    server: ServerProcess, lines: list[tuple[str, int]]
) -> tuple[httpx.AsyncClient, str, dict[str, Any]]:
    """A new cart holding `lines`; an unopened client naming it, its signed id, its
    document."""
    signed: str | None = None
    doc: dict[str, Any] = {}
    async with rest(server) as client:
        for pid, quantity in lines:
            body = {"product_id": pid, "quantity": quantity}
            headers = {"X-Cart-Id": signed} if signed else {}
            response = await client.post("/api/cart/items", json=body, headers=headers)
            assert response.status_code == 200, response.text
            signed = response.headers["x-cart-id"]
            doc = response.json()
    assert signed is not None
    return rest(server, signed), signed, doc


async def eventually(
    probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    """Poll `probe` (a function, or a coroutine function) until `done` says yes; the
    last value. Fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        await asyncio.sleep(0.05)


async def product_stock(client: httpx.AsyncClient, pid: str) -> int:
    response = await client.get("/api/products")
    (found,) = [p["stock"] for p in response.json()["products"] if p["id"] == pid]
    count: int = found
    return count
