"""Store faults seen from outside: the database locked by another program, or gone for a
while. The mutation is refused with a clear error, nothing is acknowledged, the server
stays up and carries on once the store is back."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from tests.support import ServerProcess, Tab, rest

LOCK_WAIT = "0.3s"  # SQLITE_BUSY_TIMEOUT for these servers: refusals come quickly


async def test_a_database_locked_elsewhere_refuses_changes_then_recovers(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"SQLITE_BUSY_TIMEOUT": LOCK_WAIT}).start()
    async with rest(server) as client:
        first = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 1})
        assert first.status_code == 200
        signed = first.headers["x-cart-id"]
    tab = await Tab.open(server, signed, client_id="faults")
    await tab.next("snapshot")

    # Another program (a backup, a shell) takes the write lock and keeps it.
    blocker = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with rest(server, signed) as client:
            refused = await client.post(
                "/api/cart/items", json={"product_id": "p-002", "quantity": 1}
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            await tab.send({"type": "add", "id": "m1", "product_id": "p-003", "quantity": 1})
            error = await tab.next("error")
            assert (error["id"], error["code"]) == ("m1", "unavailable")
            assert (await client.get("/healthz")).status_code == 200  # still up
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    async with rest(server, signed) as client:
        again = await client.post("/api/cart/items", json={"product_id": "p-004", "quantity": 1})
        assert again.status_code == 200
        doc = again.json()
    await tab.send({"type": "add", "id": "m2", "product_id": "p-005", "quantity": 1})
    ack = await tab.next("ack")
    assert (ack["id"], ack["version"]) == ("m2", 3)
    # Only what was acknowledged happened, at contiguous versions; the refused id was not
    # recorded as applied, so sending it again now applies it.
    assert doc["version"] == 2
    assert {i["product_id"] for i in doc["items"]} == {"p-001", "p-004"}
    assert not [f for f in tab.log if f["type"] == "ack" and f["id"] == "m1"]
    await tab.send({"type": "add", "id": "m1", "product_id": "p-003", "quantity": 1})
    assert (await tab.next("ack"))["version"] == 4
    versions = [f["version"] for f in tab.log if f["type"] == "patch"]
    assert versions == [2, 3, 4]
    await tab.close()
    rows = (
        sqlite3.connect(server.db)
        .execute("SELECT product_id FROM cart_items ORDER BY position")
        .fetchall()
    )
    assert [r[0] for r in rows] == ["p-001", "p-004", "p-005", "p-003"]
