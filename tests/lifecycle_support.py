"""Helpers of the lifecycle tests: outbox rows read from the server's file, polling with a
deadline, signed ids read back, and shopper devices with their own cookie jar."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from itsdangerous import Signer

from tests.support import SECRET, ServerProcess

T = TypeVar("T")


def events(db: Path, cart_id: str | None = None) -> list[dict[str, Any]]:
    """The outbox rows (oldest first), payloads decoded."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id, cart_id, type, payload, created_at, delivered_at, attempts"
            " FROM cart_events ORDER BY id"
        ).fetchall()
    keys = ("id", "cart_id", "type", "payload", "created_at", "delivered_at", "attempts")
    found = [dict(zip(keys, row, strict=True)) for row in rows]
    for row in found:
        row["payload"] = json.loads(row["payload"])
    return [row for row in found if cart_id is None or row["cart_id"] == cart_id]


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def epoch(iso_text: str) -> float:
    """Unix seconds of a stored '2026-11-26T10:00:00.000Z' timestamp."""
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


async def until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def unsign(signed: str) -> str:
    return Signer(SECRET, salt="cart-id", digest_method=hashlib.sha256).unsign(signed).decode()


def device(server: ServerProcess, **headers: str) -> httpx.AsyncClient:
    """A browser-like client: it keeps the cookies the server sets (its own cookie jar)."""
    return httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False, headers=headers)


def cookie(client: httpx.AsyncClient) -> str:
    value = client.cookies.get("cart_id")
    assert value, "the server set no cart_id cookie"
    return value
