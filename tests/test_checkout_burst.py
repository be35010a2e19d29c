"""Stock under contention: many carts checking out the last units at the same moment, and
reservations coming back on expiry (signed webhooks, and the sweeper)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.checkout_support import eventually, product, product_stock, rows, server_with, stock
from tests.stripe_standin import signature
from tests.support import ServerProcess, sign

CARTS = 200
STOCK = 50
EXPIRED = 10
WEBHOOK_SECRET = "whsec_test"
LIMITS = httpx.Limits(max_connections=CARTS + 10, max_keepalive_connections=CARTS + 10)


def client(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False, limits=LIMITS)


async def carts_holding(http: httpx.AsyncClient, pid: str, count: int) -> list[str]:
    """`count` new carts with one unit of `pid` each; their signed ids."""

    async def one() -> str:
        # Named by a header, never the shared cookie jar: every cart is its own.
        signed = sign(str(uuid.uuid4()))
        body = {"product_id": pid, "quantity": 1}
        response = await http.post("/api/cart/items", json=body, headers={"X-Cart-Id": signed})
        assert response.status_code == 200, response.text
        assert response.headers["x-cart-id"] == signed
        return signed

    return list(await asyncio.gather(*(one() for _ in range(count))))


class Answer:
    """A response read off a raw connection: status, headers, JSON body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, body

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode()


async def post_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, signed: str
) -> Answer:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Cart-Id: {signed}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\n{}".encode()
    )
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    status = int(head[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head[1:] if line)
    }
    body = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    await writer.wait_closed()
    return Answer(status, headers, body)


async def checkout_all(
    server: ServerProcess, signed: list[str]
) -> tuple[list[tuple[Answer, float]], float]:
    """POST /api/cart/checkout for every cart at the same moment: each on a connection
    opened beforehand, all written at once. (response, seconds) each, and the seconds
    from the first write to the last answer. A raw client: an HTTP client's shared pool
    costs more with hundreds of requests in flight than the server does."""
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in signed]
    host = f"127.0.0.1:{server.port}"
    gate = asyncio.Event()

    async def one(
        cart: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> tuple[Answer, float]:
        await gate.wait()
        began = time.perf_counter()
        answer = await post_on(*conn, host, "/api/cart/checkout", cart)
        return answer, time.perf_counter() - began

    tasks = [
        asyncio.create_task(one(cart, conn)) for cart, conn in zip(signed, connections, strict=True)
    ]
    await asyncio.sleep(0)  # every task is parked at the gate
    began = time.perf_counter()
    gate.set()
    async with asyncio.timeout(60):
        results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - began


def cart_ids(server: ServerProcess, signed: list[str]) -> list[str]:
    return [s.rsplit(".", 1)[0] for s in signed]


def statuses(server: ServerProcess, ids: list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(ids))
    found = rows(server, f"SELECT id, status FROM cart_sessions WHERE id IN ({marks})", tuple(ids))
    return dict(found)


def expired_event(checkout_id: str, cart_id: str) -> bytes:
    session = {
        "id": checkout_id,
        "object": "checkout.session",
        "status": "expired",
        "payment_status": "unpaid",
        "metadata": {"checkout_id": checkout_id, "cart_id": cart_id},
    }
    body = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "type": "checkout.session.expired",
        "data": {"object": session},
    }
    return json.dumps(body).encode()


class StockWatch:
    """Reads the product's stock from the SQLite file, in a thread, for as long as the
    burst runs: every value seen, to show it only ever went down and never below zero."""

    def __init__(self, db: Path, pid: str) -> None:
        self.db, self.pid = db, pid
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StockWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.seen) < 100_000:
            (value,) = rows(self.db, "SELECT stock FROM products WHERE id = ?", (self.pid,))[0]
            self.seen.append(value)
            self._stop.wait(0.002)


@pytest.fixture
def burst_server(tmp_path: Path) -> Any:
    env = {"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    proc = server_with(tmp_path, env, [product("burst", STOCK, 999, "Last fifty")]).start()
    yield proc
    proc.stop()


async def test_200_carts_race_for_50_units(burst_server: ServerProcess) -> None:
    server = burst_server
    async with client(server) as http:
        signed = await carts_holding(http, "burst", CARTS)
        ids = cart_ids(server, signed)
        assert len(set(ids)) == CARTS

        with StockWatch(server.db, "burst") as watch:
            results, wall = await checkout_all(server, signed)
        latencies = sorted(seconds for _, seconds in results)
        print(
            f"\n{CARTS} concurrent checkouts for {STOCK} units: {wall * 1000:.0f} ms wall,"
            f" latency p50 {statistics.median(latencies) * 1000:.0f} ms,"
            f" p95 {latencies[int(0.95 * CARTS)] * 1000:.0f} ms,"
            f" max {latencies[-1] * 1000:.0f} ms; {len(watch.seen)} stock reads"
        )

        won = [
            (cart, r) for cart, (r, _) in zip(signed, results, strict=True) if r.status_code == 200
        ]
        lost = [
            (cart, r) for cart, (r, _) in zip(signed, results, strict=True) if r.status_code != 200
        ]
        assert len(won) == STOCK and len(lost) == CARTS - STOCK
        for _, response in lost:
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "insufficient_stock"
            assert error["lines"] == [{"product_id": "burst", "requested": 1, "available": 0}]
        sessions = {r.json()["session_id"] for _, r in won}
        assert len(sessions) == STOCK
        for _, response in won:
            body = response.json()
            assert body["checkout_url"] == f"/checkout/demo/{body['session_id']}"

        assert stock(server, "burst") == 0
        assert min(watch.seen) >= 0
        assert watch.seen == sorted(watch.seen, reverse=True)  # only ever went down
        assert await eventually(lambda: product_stock(http, "burst"), lambda n: n == 0) == 0
        counts = sorted(statuses(server, ids).values())
        assert counts.count("checking_out") == STOCK
        assert counts.count("active") == CARTS - STOCK
        reserved = rows(
            server,
            "SELECT COALESCE(SUM(i.quantity), 0) FROM checkout_items i JOIN checkouts c"
            " ON c.id = i.checkout_id WHERE c.status = 'reserved' AND i.product_id = 'burst'",
        )
        assert reserved == [(STOCK,)]

        # Stripe-signed events never settle a demo checkout, however well signed.
        expiring = won[:EXPIRED]
        payloads = [
            expired_event(r.json()["session_id"], cart.rsplit(".", 1)[0]) for cart, r in expiring
        ]

        async def deliver(payload: bytes) -> int:
            headers = {
                "stripe-signature": signature(WEBHOOK_SECRET, payload),
                "content-type": "application/json",
            }
            answer = await http.post("/api/webhooks/stripe", content=payload, headers=headers)
            return answer.status_code

        assert await asyncio.gather(*(deliver(p) for p in payloads)) == [200] * EXPIRED
        assert stock(server, "burst") == 0

        # Ten shoppers cancel on the demo provider's page, all at once.
        async def cancel(response: httpx.Response) -> int:
            answer = await http.post(f"{response.json()['checkout_url']}/cancel")
            return answer.status_code

        assert await asyncio.gather(*(cancel(r) for _, r in expiring)) == [303] * EXPIRED
        assert stock(server, "burst") == EXPIRED
        assert await eventually(lambda: product_stock(http, "burst"), lambda n: n == EXPIRED)
        expired_ids = cart_ids(server, [cart for cart, _ in expiring])
        assert set(statuses(server, expired_ids).values()) == {"active"}
        assert sorted(statuses(server, ids).values()).count("checking_out") == STOCK - EXPIRED
        # Again: nothing more comes back.
        assert await asyncio.gather(*(cancel(r) for _, r in expiring)) == [303] * EXPIRED
        assert stock(server, "burst") == EXPIRED

        # The units that came back sell again, once each.
        again, _ = await checkout_all(server, [cart for cart, _ in lost[:25]])
        assert sorted(r.status_code for r, _ in again) == [200] * EXPIRED + [409] * 15
        assert stock(server, "burst") == 0


async def test_the_sweeper_returns_expired_reservations(tmp_path: Path) -> None:
    env = {"CHECKOUT_EXPIRES": "1s"}
    server = server_with(tmp_path, env, [product("swept", EXPIRED, 500)]).start()
    try:
        async with client(server) as http:
            signed = await carts_holding(http, "swept", EXPIRED)
            results, _ = await checkout_all(server, signed)
            assert [r.status_code for r, _ in results] == [200] * EXPIRED
            ids = cart_ids(server, signed)
            began = time.perf_counter()
            await eventually(lambda: stock(server, "swept"), lambda n: n == EXPIRED)
            print(f"\nsweeper returned {EXPIRED} units {time.perf_counter() - began:.2f} s later")
            await eventually(lambda: set(statuses(server, ids).values()), lambda s: s == {"active"})
            found = rows(
                server,
                "SELECT status, COUNT(*) FROM checkouts WHERE cart_id IN"
                f" ({','.join('?' * len(ids))}) GROUP BY status",
                tuple(ids),
            )
            assert found == [("released", EXPIRED)]
            assert await eventually(lambda: product_stock(http, "swept"), lambda n: n == EXPIRED)

            # Paying on the page of a swept checkout takes nothing.
            url = results[0][0].json()["checkout_url"]
            late = await http.post(f"{url}/pay")
            assert late.status_code == 303 and "checkout=cancelled" in late.headers["location"]
            assert rows(server, "SELECT COUNT(*) FROM orders") == [(0,)]
            assert stock(server, "swept") == EXPIRED
    finally:
        server.stop()
