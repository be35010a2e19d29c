"""crash: start the server, drive mutations from WebSocket tabs and REST clients, SIGKILL it
at a random instant, restart it, and check the database against what was acknowledged.

Every mutation carries a key (a tab's message id, a REST Idempotency-Key) that the store
records in the same transaction as the change. After each kill the file must show, per cart:
one mutation for every version 1..V; every acknowledged mutation at the version its ack
named; no refused one; and lines (and the stored patches' totals) equal to replaying exactly
those V mutations from an empty cart. Anything half-applied breaks one of these.

`python -m bench crash --kills 1000` runs it by hand; tests/test_crash.py runs 50."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop
import websockets

from server.store.carts import first_kept

from .harness import LocalServer, percentiles, report

PATCH_HISTORY = 100  # the server's default: the bench starts it with no PATCH_HISTORY

PRODUCTS = [f"b-{n:03d}" for n in range(12)]  # few, so sets and removes find their lines
MAX_QUANTITY = 999
NEW_CART_EVERY = 5  # cycles; the first write of a cart is an insert, later ones updates


@dataclass(frozen=True)
class Op:
    kind: str  # add | set | remove | clear
    product: str = ""
    quantity: int = 0


@dataclass
class Mutation:
    cart: str
    op: Op
    acked: int | None = None  # the version its ack named
    refused: str | None = None  # the error code it was refused with


@dataclass
class Checkpoint:
    """What a cart held at the last verified version."""

    version: int = 0
    items: dict[str, int] = field(default_factory=dict)


class Ledger:
    """Every mutation sent, by its store key, and what came back."""

    def __init__(self) -> None:
        self.sent: dict[str, Mutation] = {}
        self.unchecked: dict[str, list[str]] = {}  # cart -> keys sent since its last check
        self.carts: dict[str, Checkpoint] = {}
        self.closes: list[int | None] = []  # close codes the tabs saw, as they ended
        self.acks = 0
        self.target = 0
        self.reached = asyncio.Event()

    def send(self, key: str, cart: str, op: Op) -> None:
        assert key not in self.sent, key
        self.sent[key] = Mutation(cart, op)
        self.unchecked.setdefault(cart, []).append(key)

    def ack(self, key: str, version: int) -> None:
        self.sent[key].acked = version
        self.acks += 1
        if self.acks >= self.target:
            self.reached.set()

    def refuse(self, key: str, code: str) -> None:
        self.sent[key].refused = code

    def expect(self, more: int) -> None:
        """Set `reached` once `more` further acks came in."""
        self.target = self.acks + more
        self.reached.clear()


def replay(items: dict[str, int], op: Op) -> str | None:
    """Apply `op` to `items` as the server would; the error code if it would refuse it."""
    match op.kind:
        case "add":
            if items.get(op.product, 0) + op.quantity > MAX_QUANTITY:
                return "quantity_limit"
            items[op.product] = items.get(op.product, 0) + op.quantity
        case "set":
            if op.product not in items:
                return "not_in_cart"
            if op.quantity == 0:
                del items[op.product]
            else:
                items[op.product] = op.quantity
        case "remove":
            if op.product not in items:
                return "not_in_cart"
            del items[op.product]
        case "clear":
            items.clear()
    return None


def random_op(rng: random.Random) -> Op:
    roll = rng.random()
    product = rng.choice(PRODUCTS)
    if roll < 0.55:
        return Op("add", product, rng.randint(1, 3))
    if roll < 0.80:
        return Op("set", product, rng.randint(0, 5))
    if roll < 0.95:
        return Op("remove", product)
    return Op("clear")


# --- load ------------------------------------------------------------------------------


async def ws_client(
    url: str, cart: str, signed: str, client_id: str, ledger: Ledger, rng: random.Random
) -> None:
    """One tab: a mutation, then its ack or error, and again, until the server goes away."""
    ws_url = url.replace("http", "ws", 1) + f"/api/cart/ws?cart={signed}&client_id={client_id}"
    try:
        async with websockets.connect(
            ws_url, proxy=None, compression=None, max_size=2**22, open_timeout=5
        ) as ws:
            for n in range(1_000_000):
                op = random_op(rng)
                msg_id = f"m{n}"
                message: dict[str, Any] = {"type": op.kind, "id": msg_id}
                if op.kind != "clear":
                    message["product_id"] = op.product
                if op.kind in ("add", "set"):
                    message["quantity"] = op.quantity
                key = f"ws:{client_id}:{msg_id}"
                ledger.send(key, cart, op)
                await ws.send(json.dumps(message))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if frame.get("id") != msg_id:
                        continue  # patches, presence, snapshot
                    if frame["type"] == "ack":
                        ledger.ack(key, frame["version"])
                    else:
                        ledger.refuse(key, frame["code"])
                    break
    except websockets.ConnectionClosed as closed:
        ledger.closes.append(closed.rcvd.code if closed.rcvd else None)
    except (OSError, TimeoutError, websockets.WebSocketException):
        ledger.closes.append(None)  # killed: whatever was not answered stays unacknowledged


async def rest_client(
    url: str, cart: str, signed: str, name: str, ledger: Ledger, rng: random.Random
) -> None:
    """One REST client, each call with its own Idempotency-Key."""
    async with httpx.AsyncClient(
        base_url=url, headers={"X-Cart-Id": signed}, timeout=10, trust_env=False
    ) as client:
        try:
            for n in range(1_000_000):
                op = random_op(rng)
                idem = f"{name}-{n}"
                key = f"rest:{idem}"
                ledger.send(key, cart, op)
                headers = {"Idempotency-Key": idem}
                path = f"/api/cart/items/{op.product}"
                match op.kind:
                    case "add":
                        body = {"product_id": op.product, "quantity": op.quantity}
                        call = client.post("/api/cart/items", json=body, headers=headers)
                    case "set":
                        call = client.patch(path, json={"quantity": op.quantity}, headers=headers)
                    case "remove":
                        call = client.delete(path, headers=headers)
                    case _:
                        call = client.delete("/api/cart/items", headers=headers)
                response = await call
                if response.status_code == 200:
                    ledger.ack(key, response.json()["version"])
                elif response.status_code < 500:
                    ledger.refuse(key, response.json()["error"]["code"])
                else:
                    return  # 503 while shutting down: not acknowledged
        except httpx.HTTPError:
            return


def start_load(
    url: str, carts: dict[str, str], ledger: Ledger, rng: random.Random, tag: str
) -> list[asyncio.Task[None]]:
    """Two tabs and one REST client per cart."""
    tasks = []
    for n, (cart, signed) in enumerate(carts.items()):
        for t in range(2):
            seeded = random.Random(rng.random())
            client = ws_client(url, cart, signed, f"{tag}c{n}t{t}", ledger, seeded)
            tasks.append(asyncio.create_task(client))
        seeded = random.Random(rng.random())
        client = rest_client(url, cart, signed, f"{tag}c{n}r", ledger, seeded)
        tasks.append(asyncio.create_task(client))
    return tasks


async def new_cart(url: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
        response = await client.get("/api/cart")
    return response.json()["id"], response.headers["x-cart-id"]


# --- checks ----------------------------------------------------------------------------


class Mismatch(AssertionError):
    """The database disagrees with what was acknowledged."""


def verify(db: Path, ledger: Ledger, cart: str) -> dict[str, int]:
    """Check one cart in the (closed) database file against the ledger and move its
    checkpoint to the stored version. Counts of what was found."""
    point = ledger.carts.setdefault(cart, Checkpoint())
    with sqlite3.connect(db) as conn:
        head = conn.execute("SELECT version, status FROM cart_sessions WHERE id = ?", (cart,))
        row = head.fetchone()
        version, status = row if row else (0, "active")
        lines = dict(
            conn.execute("SELECT product_id, quantity FROM cart_items WHERE cart_id = ?", (cart,))
        )
        keys = conn.execute(
            "SELECT key, version FROM applied_mutations WHERE cart_id = ? AND version > ?",
            (cart, point.version),
        ).fetchall()
        patches = conn.execute(
            "SELECT version, body FROM cart_patches WHERE cart_id = ? ORDER BY version", (cart,)
        ).fetchall()
    where = f"cart {cart} (stored v{version}, checked up to v{point.version})"
    if status != "active":
        raise Mismatch(f"{where}: status {status}")
    if version < point.version:
        raise Mismatch(f"{where}: the stored version went back")
    by_version: dict[int, str] = {}
    for key, v in keys:
        if key not in ledger.sent or ledger.sent[key].cart != cart:
            raise Mismatch(f"{where}: key {key!r} was never sent to this cart")
        if v in by_version:
            raise Mismatch(f"{where}: v{v} has two mutations, {by_version[v]!r} and {key!r}")
        by_version[v] = key
    if sorted(by_version) != list(range(point.version + 1, version + 1)):
        raise Mismatch(f"{where}: versions with a mutation {sorted(by_version)}")

    stored = set(by_version.values())
    for key in ledger.unchecked.pop(cart, []):
        m = ledger.sent[key]
        if m.acked is not None and m.acked > point.version and by_version.get(m.acked) != key:
            raise Mismatch(f"{where}: {key!r} was acknowledged at v{m.acked}, not stored there")
        if m.refused is not None and key in stored:
            raise Mismatch(f"{where}: {key!r} was refused ({m.refused}) yet stored")

    items = dict(point.items)
    counts: dict[int, int] = {}
    for v in range(point.version + 1, version + 1):
        error = replay(items, ledger.sent[by_version[v]].op)
        if error is not None:
            raise Mismatch(f"{where}: v{v} ({by_version[v]!r}) cannot apply: {error}")
        counts[v] = sum(items.values())
    if items != lines:
        raise Mismatch(f"{where}: stored lines {lines} != replay {items}")
    tail = [v for v, _ in patches]
    if tail != list(range(first_kept(version, PATCH_HISTORY), version + 1)):
        raise Mismatch(f"{where}: stored patches {tail[:3]}..{tail[-3:]}")
    for v, body in patches:
        if v in counts and json.loads(body)["item_count"] != counts[v]:
            raise Mismatch(f"{where}: the v{v} patch's item_count differs from the replay")

    unacked = sum(1 for key in stored if ledger.sent[key].acked is None)
    ledger.carts[cart] = Checkpoint(version, items)
    return {"applied": version - point.version, "applied_unacked": unacked}


async def check_served(url: str, ledger: Ledger, carts: dict[str, str]) -> None:
    """The restarted server serves exactly what the file held."""
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client:
        for cart, signed in carts.items():
            doc = (await client.get("/api/cart", headers={"X-Cart-Id": signed})).json()
            point = ledger.carts.get(cart, Checkpoint())
            served = {i["product_id"]: i["quantity"] for i in doc["items"]}
            if doc["version"] != point.version or served != point.items:
                raise Mismatch(f"cart {cart}: served v{doc['version']} {served}, stored {point}")


# --- the loop --------------------------------------------------------------------------


async def crash_loop(
    kills: int,
    seconds: float,
    seed: int = 0,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`kills` cycles of start, load, SIGKILL at a random instant, verify. Raises Mismatch
    on the first disagreement, TimeoutError if the cycles take longer than `seconds`."""
    rng = random.Random(seed)
    server = LocalServer(workdir=workdir)
    ledger = Ledger()
    carts: dict[str, str] = {}
    totals = {"applied": 0, "applied_unacked": 0}
    started = time.monotonic()
    for cycle in range(kills):
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"only {cycle} of {kills} kills in {seconds:g} s")
        server.start()
        await check_served(server.url, ledger, carts)
        if len(carts) < 3 or cycle % NEW_CART_EVERY == 0:
            cart, signed = await new_cart(server.url)
            carts[cart] = signed
            if len(carts) > 3:
                del carts[next(iter(carts))]
        ledger.expect(rng.randint(1, 60))
        tasks = start_load(server.url, carts, ledger, rng, f"k{cycle}")
        await asyncio.wait_for(ledger.reached.wait(), 30)
        # The instant: anywhere in the next few milliseconds of writes, not just at an ack.
        await asyncio.sleep(rng.uniform(0, 0.02))
        server.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for cart in carts:
            found = verify(server.dir / "bench.db", ledger, cart)
            for name, value in found.items():
                totals[name] += value
        if progress is not None and (cycle + 1) % 50 == 0:
            progress(f"{cycle + 1} kills, {ledger.acks} acks, {time.monotonic() - started:.0f} s")
    server.start()  # and once more: what the last kill left is served
    await check_served(server.url, ledger, carts)
    server.stop()
    mutations = list(ledger.sent.values())
    return {
        "kills": kills,
        "seconds": round(time.monotonic() - started, 1),
        "sent": len(mutations),
        "acknowledged": sum(1 for m in mutations if m.acked is not None),
        "refused": sum(1 for m in mutations if m.refused is not None),
        "applied": totals["applied"],
        "applied_unacknowledged": totals["applied_unacked"],
        "startup_ms": percentiles(server.startups),
    }


# --- the `python -m bench crash` mode ----------------------------------------------------

OWN_SERVER = True  # it starts, kills and restarts its own: --url does not apply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.url:
        parser.error("crash starts (and kills) its own server; --url does not apply")
    if not 0 < args.kills <= 100_000 or not 0 < args.max_seconds <= 86_400:
        parser.error("a run is bounded: --kills 1..100000, --max-seconds up to a day")


def main(args: argparse.Namespace, target: object) -> None:
    result = uvloop.run(
        crash_loop(args.kills, args.max_seconds, args.seed, progress=lambda s: print(s, flush=True))
    )
    start = result["startup_ms"]
    report(
        "crash",
        [
            ("kills survived", f"{result['kills']:,} in {result['seconds']:,.0f} s"),
            (
                "mutations",
                f"{result['sent']:,} sent, {result['acknowledged']:,} acknowledged,"
                f" {result['refused']:,} refused",
            ),
            (
                "in the store",
                f"{result['applied']:,} applied, of which {result['applied_unacknowledged']:,}"
                " committed but killed before the answer",
            ),
            ("lost or half-applied", "0 (every check passed)"),
            ("server startup", f"p50 {start['p50']:.0f} ms  max {start['max']:.0f} ms"),
        ],
        result,
    )
