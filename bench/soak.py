"""soak: a server left running under a steady, moderate mix of everything shoppers do: tabs
opening and closing (resuming with ?since=), edits over WebSocket and REST, long-polls,
checkouts paid and cancelled with the demo provider, and logins merging carts
(DEMO_LOGIN=1). Every 10 s it samples RSS, open descriptors, database size, event-loop lag
and the outbox backlog. At the end it checks that every acknowledged mutation is stored and
that every tab saw every version once, in order, and fails if RSS or descriptors grew by
more than 10 % after the first two minutes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvloop
import websockets

from .harness import LocalServer, products, report
from .sampler import Sample, growth, mb, sample

OWN_SERVER = True  # it judges its own server's RSS and descriptors
BASELINE = 120.0  # seconds: growth is measured from here (start-up and warm-up before)
ALLOWED_GROWTH = 0.10
USERS = 4  # demo users the shoppers log in as: several shoppers merge into one user's cart
# What a shopper does next, by weight.
ACTIONS = {
    "ws_edit": 55,
    "rest_edit": 20,
    "reopen_tab": 8,
    "long_poll": 8,
    "checkout": 5,
    "login": 4,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--shoppers", type=int, default=16)
    parser.add_argument("--rate", type=float, default=20.0, help="actions per second, in all")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.minutes <= 240 or not 1 <= args.shoppers <= 200:
        parser.error("a run is bounded: --minutes 0..240, --shoppers 1..200")
    if not 0 < args.rate <= 200 or not 1 <= args.every <= 60:
        parser.error("--rate 0..200 actions/s, --every 1..60 s")


@dataclass
class Ledger:
    acked: list[tuple[str, str, int]] = field(default_factory=list)  # (cart, key, version)
    tabs_opened: int = 0
    versions_seen: int = 0
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class Tab:
    """One WebSocket tab: checks that versions arrive once each, in order."""

    def __init__(self, ledger: Ledger, cart_id: str) -> None:
        self.ledger = ledger
        self.cart_id = cart_id
        self.client_id = uuid.uuid4().hex[:16]
        self.version: int | None = None
        self.moved: str | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def open(self, ws_url: str, signed: str, since: int | None) -> Tab:
        query = f"?cart={signed}&client_id={self.client_id}"
        if since is not None:
            query += f"&since={since}"
            self.version = since
        self.ws = await websockets.connect(ws_url + query, max_size=2**20, open_timeout=30)
        self.reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.ready.wait(), 30)
        self.ledger.tabs_opened += 1
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self._frame(json.loads(raw))
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("tab closed"))

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "snapshot":
            self.version = frame["cart"]["version"]
            self.ready.set()
        elif kind == "patch":
            self.ready.set()  # a resumed tab starts with the patches it missed
            expected = (self.version or 0) + 1
            if frame["version"] != expected and self.moved is None:
                self.ledger.violations.append(
                    f"tab {self.client_id} on {self.cart_id[:8]}: version {frame['version']}"
                    f" after {self.version}"
                )
            self.version = frame["version"]
            self.ledger.versions_seen += 1
        elif kind == "moved":
            self.moved = frame["cart_id"]
        elif kind in ("ack", "error") and frame.get("id") in self.waiting:
            self.waiting.pop(frame["id"]).set_result(frame)
        if kind == "presence" or kind == "pong":
            self.ready.set()

    async def add(self, product_id: str) -> dict[str, Any]:
        msg_id = uuid.uuid4().hex[:12]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        message = {"type": "add", "id": msg_id, "product_id": product_id, "quantity": 1}
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        if answer["type"] == "ack":
            self.ledger.acked.append(
                (self.cart_id, f"ws:{self.client_id}:{msg_id}", answer["version"])
            )
        return answer

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


class Shopper:
    def __init__(
        self, n: int, url: str, ids: list[str], ledger: Ledger, client: httpx.AsyncClient
    ) -> None:
        self.n = n
        self.url = url
        self.ws_url = url.replace("http://", "ws://") + "/api/cart/ws"
        self.ids = ids
        self.ledger = ledger
        self.client = client
        self.rng = random.Random(n)
        self.cart_id = ""
        self.signed = ""
        self.tabs: list[Tab] = []

    @property
    def headers(self) -> dict[str, str]:
        return {"x-cart-id": self.signed} if self.signed else {}

    async def start(self) -> None:
        await self._follow(await self.client.get("/api/cart", headers=self.headers))

    async def _follow(self, response: httpx.Response) -> None:
        """Move to the cart a response names (a fresh one, or the user's), with two tabs."""
        response.raise_for_status()
        cart_id, signed = response.json()["id"], response.headers["x-cart-id"]
        if cart_id == self.cart_id and len(self.tabs) == 2:
            return
        for tab in self.tabs:
            await tab.close()
        self.cart_id, self.signed = cart_id, signed
        self.tabs = [await Tab(self.ledger, cart_id).open(self.ws_url, signed, None) for _ in "ab"]

    async def act(self) -> None:
        if any(tab.moved for tab in self.tabs):  # paid or merged elsewhere: follow
            await self._follow(await self.client.get("/api/cart", headers=self.headers))
        action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        self.ledger.count(action)
        await getattr(self, action)()

    def product(self) -> str:
        return self.ids[self.rng.randrange(len(self.ids))]

    async def ws_edit(self) -> None:
        answer = await self.rng.choice(self.tabs).add(self.product())
        if answer["type"] == "error":
            self.ledger.count(f"refused: {answer['code']}")

    async def rest_edit(self) -> None:
        key = uuid.uuid4().hex
        headers = self.headers | {"idempotency-key": key}
        body = {"product_id": self.product(), "quantity": 1}
        response = await self.client.post("/api/cart/items", json=body, headers=headers)
        if response.status_code == 200:
            # The cart the answer names: a cart paid or merged a moment ago (by another
            # shopper of the same user) is answered by its successor.
            doc = response.json()
            self.ledger.acked.append((doc["id"], f"rest:{key}", doc["version"]))
        else:
            self.ledger.count(f"refused: {response.json()['error']['code']}")

    async def reopen_tab(self) -> None:
        """Close a tab and open another that resumes where it left off (?since=)."""
        old = self.tabs.pop(self.rng.randrange(len(self.tabs)))
        await old.close()
        since = old.version if old.moved is None else None
        self.tabs.append(await Tab(self.ledger, self.cart_id).open(self.ws_url, self.signed, since))

    async def long_poll(self) -> None:
        since = self.tabs[0].version or 0
        response = await self.client.get(
            f"/api/cart/changes?since={since}&wait=2", headers=self.headers
        )
        response.raise_for_status()
        body = response.json()
        versions = [p["version"] for p in body.get("patches", [])]
        if versions and versions != list(range(since + 1, since + 1 + len(versions))):
            self.ledger.violations.append(f"long-poll since {since}: {versions}")

    async def checkout(self) -> None:
        response = await self.client.post("/api/cart/checkout", json={}, headers=self.headers)
        if response.status_code != 200:
            self.ledger.count(f"checkout refused: {response.json()['error']['code']}")
            return
        if self.rng.random() < 0.5:
            path = urlsplit(response.json()["checkout_url"]).path
            paid = await self.client.post(f"{path}/pay")
            self.ledger.count(f"checkout paid: {paid.status_code}")
            await self._follow(await self.client.get("/api/cart", headers=self.headers))
        else:
            cancelled = await self.client.post("/api/cart/checkout/cancel", headers=self.headers)
            self.ledger.count(f"checkout cancelled: {cancelled.status_code}")

    async def login(self) -> None:
        user = f"soak{self.rng.randrange(USERS)}"
        token = (await self.client.post("/api/demo/login", json={"user": user})).json()["token"]
        response = await self.client.post(
            "/api/cart/login", json={"token": token}, headers=self.headers
        )
        if response.status_code != 200:
            self.ledger.count(f"login refused: {response.json()['error']['code']}")
            return
        await self._follow(response)

    async def settle(self) -> list[str]:
        """After the load stops: every open tab must reach the cart's version."""
        current = (await self.client.get("/api/cart", headers=self.headers)).json()["version"]
        behind = []
        for tab in self.tabs:
            for _ in range(100):  # bounded: 10 s
                if tab.version == current or tab.moved:
                    break
                await asyncio.sleep(0.1)
            if tab.version != current and not tab.moved:
                behind.append(f"tab {tab.client_id} at {tab.version}, cart at {current}")
        return behind


async def run(
    args: argparse.Namespace, server: LocalServer
) -> tuple[list[Sample], Ledger, list[str]]:
    assert server.proc is not None
    pid = server.proc.pid
    ids = products(server.url, 20)
    ledger = Ledger()
    samples: list[Sample] = []
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))  # carts by X-Cart-Id only
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30, trust_env=False, cookies=cookies
    ) as client:
        shoppers = [Shopper(n, server.url, ids, ledger, client) for n in range(args.shoppers)]
        for shopper in shoppers:
            await shopper.start()
        print(
            f"{'t (s)':>6} {'RSS MB':>7} {'fds':>5} {'DB MB':>6} {'lag ms':>7} {'outbox':>7}"
            f" {'acked':>7} {'tabs':>5}",
            flush=True,
        )

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                s = await sample(server.url, pid, started)
                samples.append(s)
                g = s.gauges
                print(
                    f"{s.at:>6.0f} {mb(s.rss):>7} {s.fds:>5} {mb(g['cart_database_bytes']):>6}"
                    f" {g['cart_event_loop_lag_seconds'] * 1000:>7.1f}"
                    f" {g['cart_outbox_pending']:>7.0f} {len(ledger.acked):>7}"
                    f" {g['cart_ws_connections']:>5.0f}",
                    flush=True,
                )
                await asyncio.sleep(args.every)

        async def drive(shopper: Shopper) -> None:
            interval = args.shoppers / args.rate
            due = time.monotonic() + random.Random(shopper.n).random() * interval
            while due < stop_at:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                try:
                    await shopper.act()
                except (
                    httpx.HTTPError,
                    OSError,
                    TimeoutError,
                    websockets.WebSocketException,
                ) as exc:
                    ledger.violations.append(f"shopper {shopper.n}: {type(exc).__name__}: {exc}")
                    if len(ledger.violations) > 100:
                        raise
                due += interval

        watcher = asyncio.create_task(sampler())
        await asyncio.gather(*(drive(s) for s in shoppers))
        await watcher
        behind = [line for s in shoppers for line in await s.settle()]
        for shopper in shoppers:
            for tab in shopper.tabs:
                await tab.close()
    return samples, ledger, behind


def missing_acks(db: Path, ledger: Ledger) -> list[str]:
    """Acknowledged mutations not stored with the version they were acknowledged at."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        stored = {
            (cart, key): version
            for cart, key, version in conn.execute(
                "SELECT cart_id, key, version FROM applied_mutations"
            )
        }
    elsewhere = {key: (cart, version) for (cart, key), version in stored.items()}
    return [
        f"{cart[:8]} {key} v{version}; stored: {elsewhere.get(key)}"
        for cart, key, version in ledger.acked
        if stored.get((cart, key)) != version
    ]


def main(args: argparse.Namespace, target: object) -> None:
    server = LocalServer({"DEMO_LOGIN": "1", "DEMO_PAYMENTS": "1"}).start()
    try:
        samples, ledger, behind = uvloop.run(run(args, server))
        server.stop()
        missing = missing_acks(server.dir / "bench.db", ledger)
    finally:
        server.remove()
    since = min(BASELINE, args.minutes * 60 / 3)  # a short run: its first third
    rss, fds = growth(samples, since, "rss"), growth(samples, since, "fds")
    lag = max(s.gauges["cart_event_loop_lag_seconds"] for s in samples)
    failures = {
        "acknowledged but not stored": len(missing),
        "tab or long-poll saw a version out of order": len(ledger.violations),
        "tab behind at the end": len(behind),
        "RSS grew > 10 %": int(rss > ALLOWED_GROWTH),
        "descriptors grew > 10 %": int(fds > ALLOWED_GROWTH),
    }
    ok = not any(failures.values())
    first = next(s for s in samples if s.at >= since)
    last = samples[-1]
    report(
        "soak",
        [
            ("ran", f"{args.minutes:g} min, {args.shoppers} shoppers, {args.rate:g} actions/s"),
            ("actions", ", ".join(f"{k} {v}" for k, v in sorted(ledger.counts.items()))),
            ("acknowledged", f"{len(ledger.acked)} mutations, all stored: {not missing}"),
            ("tabs", f"{ledger.tabs_opened} opened, {ledger.versions_seen} patches checked"),
            (
                "RSS",
                f"{mb(first.rss)} MB at {first.at:.0f} s -> {mb(last.rss)} MB"
                f" (growth, medians of 3 samples: {rss:+.1%})",
            ),
            ("descriptors", f"{first.fds} at {first.at:.0f} s -> {last.fds} (growth {fds:+.1%})"),
            ("database", f"{mb(last.gauges['cart_database_bytes'])} MB at the end"),
            ("event-loop lag", f"worst 30-60 s peak {lag * 1000:.1f} ms"),
            ("verdict", "PASS" if ok else f"FAIL {[k for k, v in failures.items() if v]}"),
        ],
        {
            "minutes": args.minutes,
            "shoppers": args.shoppers,
            "rate": args.rate,
            "actions": ledger.counts,
            "acked": len(ledger.acked),
            "failures": failures,
            "examples": (missing + ledger.violations + behind)[:10],
            "rss_growth": rss,
            "fd_growth": fds,
            "samples": [
                {"t": round(s.at), "rss": s.rss, "fds": s.fds, **s.gauges} for s in samples
            ],
        },
    )
    if not ok:
        raise SystemExit(1)
